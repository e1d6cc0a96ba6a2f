"""The configuration examples operators copy from the README must load as written."""

import re
from pathlib import Path

from oslo_config import cfg

README = Path(__file__).resolve().parents[2] / "README.md"


def _ini_blocks() -> list[str]:
    return re.findall(r"```ini\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_ini_examples() -> None:
    assert len(_ini_blocks()) >= 3


def test_no_inline_comments_in_ini_examples(tmp_path: Path) -> None:
    """oslo.config keeps an inline '# ...' as part of the value: comments go on their own line."""
    for block in _ini_blocks():
        path = tmp_path / "example.conf"
        path.write_text(block)
        sections: dict[str, dict[str, list[str]]] = {}
        cfg.ConfigParser(str(path), sections).parse()
        for section, options in sections.items():
            for name, values in options.items():
                for value in values:
                    assert "#" not in value, f"[{section}] {name} = {value!r}"


def test_architecture_names_every_module() -> None:
    """ARCHITECTURE.md is the map of the package: a module it does not name is off the map."""
    root = README.parent / "edgecache"
    text = (README.parent / "ARCHITECTURE.md").read_text()
    missing = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        folder = f"{rel.parent.as_posix()}/" if rel.parent.parts else ""
        named = f"`{rel.as_posix()}`" in text or rel.as_posix() in text
        listed = bool(folder) and f"`{folder}`" in text and f"`{rel.stem}`" in text
        if not (named or listed):
            missing.append(rel.as_posix())
    assert not missing, f"ARCHITECTURE.md does not name: {', '.join(missing)}"
