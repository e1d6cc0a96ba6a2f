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


def _unopenable_citations(text: str) -> list[str]:
    """What in ``text`` cites a document a reader of this repository cannot open.

    The patterns are built from pieces so that this file does not match itself.
    A section sign is fine after an RFC number ("RFC 9110 " then the sign) or a
    path under docs/.
    """
    sign = "\u00a7"
    names = [
        "spec" + " " + sign,
        "glance" + "-contract",
        "perf" + "-anchors",
        "real" + "-glance",
        "style" + "-anchors",
    ]
    found = [name for name in names if name in text]
    for match in re.finditer(sign + r"\s*\d", text):
        before = text[: match.start()]
        if not re.search(r"(RFC \d+|docs/\S+)\s*$", before):
            found.append(match.group())
    found += re.findall(r"\bissues?\s+#?\d+", text, flags=re.IGNORECASE)
    return found


def test_citations_name_documents_in_reach() -> None:
    """Comments cite RFCs, upstream source, Launchpad bugs or docs/, never a private note."""
    root = README.parent
    suffixes = {
        ".py", ".md", ".yml", ".yaml", ".json", ".conf", ".sample", ".service", ".ini",
        ".toml", ".txt", ".cfg", ".sh",
    }
    skip = {"__pycache__", "results"}
    paths = [root / "README.md", root / "ARCHITECTURE.md"]
    for folder in ("edgecache", "lab", "bench", "tests", "etc", "systemd", "docs"):
        paths += sorted(
            path for path in (root / folder).rglob("*")
            if path.is_file() and path.suffix in suffixes
            and not skip & set(path.relative_to(root).parts)
        )
    offending = []
    for path in paths:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for citation in _unopenable_citations(line):
                offending.append(f"{path.relative_to(root)}:{number}: {citation!r}")
    assert not offending, "cite a document in the repository instead:\n" + "\n".join(offending)


def test_citation_patterns_catch_what_they_must() -> None:
    sign = "\u00a7"
    assert _unopenable_citations(f"(spec {sign}5.5)")
    assert _unopenable_citations(f"see {sign}4 above")
    assert _unopenable_citations("glance" + "-contract item 4")
    issue = "iss" + "ue"
    assert _unopenable_citations(f"as in {issue} 6")
    assert _unopenable_citations(f"({issue.title()} #12)")
    assert not _unopenable_citations(f"RFC 9110 {sign}14.2 and RFC 8089 {sign}2")
    assert not _unopenable_citations("LP#1664709; docs/behaviour.md#integrity")


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_cited_doc_sections_exist() -> None:
    """A docs/ file and section cited anywhere (or linked between docs) exists."""
    root = README.parent
    anchors: dict[str, set[str]] = {}
    for doc in (root / "docs").glob("*.md"):
        headings = re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.MULTILINE)
        anchors[doc.name] = {_slug(heading) for heading in headings}
    paths = [root / "README.md", root / "ARCHITECTURE.md", *(root / "docs").glob("*.md")]
    for folder in ("edgecache", "lab", "bench", "tests", "etc"):
        paths += [p for p in (root / folder).rglob("*") if p.suffix in (".py", ".md", ".yml")]
    broken = []
    for path in paths:
        text = path.read_text()
        cited = re.findall(r"docs/([\w-]+\.md)(?:#([\w-]+))?", text)
        if path.parent.name == "docs":  # links between the docs are relative
            cited += re.findall(r"\]\(([\w-]+\.md)(?:#([\w-]+))?\)", text)
        for name, anchor in cited:
            if name not in anchors or (anchor and anchor not in anchors[name]):
                broken.append(f"{path.relative_to(root)}: docs/{name}#{anchor}")
    assert not broken, "no such document or section:\n" + "\n".join(broken)
