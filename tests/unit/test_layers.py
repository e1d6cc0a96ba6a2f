"""The import rules between edgecache's layers, read from the source itself.

The layer folders only mean something while the imports respect them: a core
that imports aiohttp can no longer be tested without a server, an API that
imports the daemon cannot be built without its configuration. Every module under
``edgecache/`` is parsed (never imported, so nothing runs) and every ``import``
and ``from ... import`` in it counts, including those under ``TYPE_CHECKING``
or inside functions: a deferred import is still a dependency. A violation is
reported as ``file:line: module imports name``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "edgecache"

#: Packages the core must never reach: the layers above it, and HTTP.
CORE_FORBIDDEN = (
    "edgecache.api",
    "edgecache.daemon",
    "edgecache.cli",
    "edgecache.access",
    "edgecache.ops",
    "edgecache.upstream",
    "aiohttp",
)
#: The leaves every layer shares; they may import one another and nothing else of ours.
LEAVES = (
    "edgecache.model", "edgecache.errors", "edgecache.clock", "edgecache.backoff",
    "edgecache.metrics",
)
#: The only layers that may speak aiohttp's server side.
WEB_LAYERS = ("edgecache.api", "edgecache.daemon")


@dataclass(frozen=True)
class Import:
    """One imported name, where it was imported."""

    module: str
    path: Path
    line: int
    #: the fully qualified name imported (``aiohttp.web``, ``edgecache.daemon.config``)
    name: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.module} imports {self.name}"


def module_name(path: Path, root: Path = REPO) -> str:
    """``edgecache/core/fill.py`` -> ``edgecache.core.fill`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, path: Path, *, is_package: bool) -> Iterator[Import]:
    """Every name ``source`` imports, relative imports resolved against ``module``.

    ``from a import b`` yields ``a.b`` (b may be a submodule: ``from aiohttp
    import web`` is an import of ``aiohttp.web``) as well as ``a`` itself.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield Import(module, path, node.lineno, base)
            for alias in node.names:
                if alias.name != "*":
                    yield Import(module, path, node.lineno, f"{base}.{alias.name}")


def package_imports(root: Path = PACKAGE) -> list[Import]:
    """The imports of every module under ``root``."""
    found: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        found.extend(
            imports_of(
                path.read_text(encoding="utf-8"),
                module_name(path, root.parent),
                path,
                is_package=path.name == "__init__.py",
            )
        )
    return found


def within(name: str, prefix: str) -> bool:
    """Whether ``name`` is the module ``prefix`` or lies under it."""
    return name == prefix or name.startswith(prefix + ".")


def is_web(name: str) -> bool:
    """aiohttp's server side: ``aiohttp.web`` and its ``aiohttp.web_*`` modules."""
    return within(name, "aiohttp.web") or name.startswith("aiohttp.web_")


def core_reaches_up(imp: Import) -> bool:
    return within(imp.module, "edgecache.core") and any(
        within(imp.name, forbidden) for forbidden in CORE_FORBIDDEN
    )


def web_outside_web_layers(imp: Import) -> bool:
    return is_web(imp.name) and not any(within(imp.module, layer) for layer in WEB_LAYERS)


def leaf_imports_more(imp: Import) -> bool:
    return (
        imp.module in LEAVES
        and within(imp.name, "edgecache")
        and imp.name != "edgecache"
        and not any(within(imp.name, leaf) for leaf in LEAVES)
    )


def imports_test_code(imp: Import) -> bool:
    return within(imp.name, "lab") or within(imp.name, "tests")


def api_imports_daemon(imp: Import) -> bool:
    return within(imp.module, "edgecache.api") and within(imp.name, "edgecache.daemon")


RULES: dict[str, Callable[[Import], bool]] = {
    "core imports no upper layer and no aiohttp": core_reaches_up,
    "only api and daemon import aiohttp.web": web_outside_web_layers,
    "model, errors, clock and metrics import only each other": leaf_imports_more,
    "nothing imports lab or tests": imports_test_code,
    "api imports no daemon": api_imports_daemon,
}


def violations(rule: Callable[[Import], bool], found: list[Import]) -> list[str]:
    """One ``file:line`` line per offending import statement (not per imported name)."""
    seen: dict[tuple[Path, int], Import] = {}
    for imp in found:
        if rule(imp):
            seen.setdefault((imp.path, imp.line), imp)
    return [str(imp) for imp in seen.values()]


@pytest.fixture(scope="module")
def edgecache_imports() -> list[Import]:
    found = package_imports()
    assert found, f"no imports found under {PACKAGE}"
    return found


@pytest.mark.parametrize("rule", list(RULES), ids=list(RULES))
def test_layer_rule(rule: str, edgecache_imports: list[Import]) -> None:
    broken = violations(RULES[rule], edgecache_imports)
    assert not broken, f"{rule}:\n" + "\n".join(broken)


# -- the checker itself: each rule must catch what it is there for ------------------


def _check(module: str, source: str, *, is_package: bool = False) -> dict[str, list[str]]:
    path = REPO / (module.replace(".", "/") + ("/__init__.py" if is_package else ".py"))
    found = list(imports_of(source, module, path, is_package=is_package))
    return {name: broken for name, rule in RULES.items() if (broken := violations(rule, found))}


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("edgecache.core.fill", "import aiohttp\n", "core imports no upper layer and no aiohttp"),
        ("edgecache.core.fill", "from ..upstream import glance\n",
         "core imports no upper layer and no aiohttp"),
        ("edgecache.core.cache", "from edgecache.access.grants import X\n",
         "core imports no upper layer and no aiohttp"),
        ("edgecache.upstream.glance", "from aiohttp import web\n",
         "only api and daemon import aiohttp.web"),
        ("edgecache.ops.prefetch", "import aiohttp.web_request\n",
         "only api and daemon import aiohttp.web"),
        ("edgecache.model", "from edgecache.core.index import Index\n",
         "model, errors, clock and metrics import only each other"),
        ("edgecache.metrics", "from . import daemon\n",
         "model, errors, clock and metrics import only each other"),
        ("edgecache.ops.scrub", "from tests.support.clock import FakeClock\n",
         "nothing imports lab or tests"),
        ("edgecache.cli.cache", "import lab.glance\n", "nothing imports lab or tests"),
        ("edgecache.api.routes", "from edgecache.daemon import logs\n", "api imports no daemon"),
        ("edgecache.api.cache_api",
         "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..daemon.config import S\n",
         "api imports no daemon"),
    ],
)
def test_the_checker_catches_a_violation(module: str, source: str, rule: str) -> None:
    """Each rule fires on a statement that breaks it, and names the line."""
    broken = _check(module, source)
    assert list(broken) == [rule]
    (line,) = broken[rule]
    assert f":{source.count(chr(10))}: {module} imports " in line


@pytest.mark.parametrize(
    ("module", "source", "is_package"),
    [
        ("edgecache.core.fill", "from edgecache.model import ImageBody\nimport asyncio\n", False),
        ("edgecache.core", "from . import policy\n", True),
        ("edgecache.api.images", "from aiohttp import web\nfrom edgecache.core import cache\n",
         False),
        ("edgecache.daemon.app", "from aiohttp.web import Application\n", False),
        ("edgecache.upstream.glance", "import aiohttp\n", False),
        ("edgecache.model", "from edgecache.errors import NotFound\nimport hashlib\n", False),
        ("edgecache.clock", "from edgecache import metrics\n", False),
        ("edgecache.cli", "from edgecache.daemon import app\n", True),
    ],
)
def test_the_checker_allows_what_the_layers_allow(
    module: str, source: str, is_package: bool
) -> None:
    assert _check(module, source, is_package=is_package) == {}


def test_relative_imports_resolve_against_the_package() -> None:
    path = PACKAGE / "core" / "__init__.py"
    names = {i.name for i in imports_of("from . import policy\nfrom .. import errors\n",
                                        "edgecache.core", path, is_package=True)}
    assert {"edgecache.core.policy", "edgecache.errors"} <= names
    path = PACKAGE / "core" / "fill.py"
    names = {i.name for i in imports_of("from .index import Index\n", "edgecache.core.fill",
                                        path, is_package=False)}
    assert "edgecache.core.index.Index" in names
