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
