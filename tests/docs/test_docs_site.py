"""The documentation site (mkdocs.yml, docs/): its code runs, and its API reference covers every public name.

Code. Every ```python block of the hand-written pages under ``docs/`` (home, guides, design notes)
runs. A page's blocks run in the page's order in one namespace, as a reader runs them one after the
other, with the page's own line numbers in tracebacks. A block that a test run cannot execute (it needs
a data folder, a GPU or minutes) is marked by the HTML comment ``<!-- no-test -->`` on the line before
its opening fence, as in README.md (tests/docs/test_docs.py); prefer self-contained blocks. A page whose code
imports an optional dependency that is not installed (hypothesis, pymatgen, ASE) is skipped, naming it.

API reference. Every name in ``soft_niggli.__all__`` and in the ``__all__`` of every public module
(a dotted path without a part starting with ``_``, found by walking the installed package, so a new
module is covered without listing it here) must be documented on the built site: its inventory of
documented objects (``objects.inv``) must hold the name under that module, or the same object under
the module that defines it. The site is the one CI has just built when ``$SOFT_NIGGLI_DOCS_SITE``
names its folder; otherwise it is built here once with ``mkdocs build --strict`` (about 10 s). Skipped
when MkDocs is not installed (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import soft_niggli

ROOT = REPO_ROOT
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- no-test -->"
OPTIONAL = {"hypothesis", "pymatgen", "ase", "spglib", "moyopy", "matplotlib"}
SITE_ENV = "SOFT_NIGGLI_DOCS_SITE"


# ------------------------------------------------------------------------------------------- code


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def _python_blocks(page: Path) -> list[tuple[int, str, bool]]:
    """``(first code line, code, skipped)`` per ```python block of ``page``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise AssertionError(f"{page}:{i + 1}: ```python block is never closed")
            previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            blocks.append((i + 2, "\n".join(lines[i + 1:end]) + "\n", previous == SKIP_MARK))
            i = end
        i += 1
    return blocks


PAGES_WITH_CODE = [p for p in _pages() if _python_blocks(p)]


def test_the_docs_have_pages_with_python_code():
    assert (DOCS / "index.md").is_file() and (ROOT / "mkdocs.yml").is_file()
    assert len(PAGES_WITH_CODE) >= 4, [str(p) for p in PAGES_WITH_CODE]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[p.relative_to(DOCS).as_posix() for p in PAGES_WITH_CODE])
def test_docs_page_python_blocks_run(page, monkeypatch):
    # A page may register a loss (the guide to adding one does): keep it out of other tests.
    from soft_niggli.losses import get_loss

    registry_module = sys.modules[get_loss.__module__]
    if isinstance(getattr(registry_module, "_REGISTRY", None), dict):
        monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    namespace = {"__name__": "__docs__"}
    ran = 0
    for first_line, code, skipped in _python_blocks(page):
        if skipped:
            continue
        # Pad with newlines so that tracebacks point at the page's own line numbers.
        compiled = compile("\n" * (first_line - 1) + code, str(page), "exec")
        try:
            exec(compiled, namespace)  # noqa: S102 -- running the documentation is the point
        except ModuleNotFoundError as err:
            if err.name and err.name.split(".")[0] in OPTIONAL:
                pytest.skip(f"{page.name}:{first_line} needs {err.name} (not installed)")
            raise
        ran += 1
    assert ran, f"{page}: every python block is marked {SKIP_MARK}"


def test_docs_pages_name_no_private_folders_or_tracker_history():
    # Readers have neither the team's folders nor its tracker.
    pattern = re.compile(r"\.\./shared|\bissue \d+|\bsession\b", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in _pages()
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------------- API reference


def _public_modules() -> list[str]:
    names = {soft_niggli.__name__}

    def onerror(name):  # a module that fails to import: its own tests report it; still listed here
        names.add(name)

    for info in pkgutil.walk_packages(soft_niggli.__path__, soft_niggli.__name__ + ".", onerror=onerror):
        names.add(info.name)
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def _inventory(site: Path) -> set[str]:
    """Names of the objects rendered on the site: the primary entries (priority 1) of its Sphinx
    inventory (v2: 4 header lines, then zlib lines ``name domain:role priority uri dispname``); the
    secondary ones are other names that link to those."""
    data = (site / "objects.inv").read_bytes()
    start = 0
    for _ in range(4):
        start = data.index(b"\n", start) + 1
    entries = [line.split(" ") for line in zlib.decompress(data[start:]).decode("utf-8").splitlines() if line]
    return {e[0] for e in entries if len(e) > 2 and e[2] == "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get(SITE_ENV)
    if given:
        path = Path(given)
        assert (path / "objects.inv").is_file(), f"${SITE_ENV}={given}: no objects.inv there (build the site first)"
        return path
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    path = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(path)],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stderr[-6000:]}"
    return path


def test_the_module_walk_finds_the_public_modules():
    modules = _public_modules()
    for name in ("soft_niggli", "soft_niggli.niggli", "soft_niggli.losses", "soft_niggli.testing",
                 "soft_niggli.baselines"):
        assert name in modules


def test_api_reference_documents_every_public_name(site):
    documented = _inventory(site)
    # Where an object is documented under some public module: by its defining path, and by identity
    # for the names of every module's __all__ that the site lists.
    def key(obj, name: str) -> tuple:
        # A number, bool or None is the same object wherever it appears: match those by name too.
        return (id(obj), name if obj is None or isinstance(obj, (bool, int, float)) else "")

    by_identity: dict[tuple, str] = {}
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if f"{module_name}.{name}" in documented and hasattr(module, name):
                by_identity.setdefault(key(getattr(module, name), name), f"{module_name}.{name}")
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if f"{module_name}.{name}" in documented:
                continue
            obj = getattr(module, name, None)
            defined = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
            if defined in documented or key(obj, name) in by_identity:
                continue
            missing.append(f"{module_name}.{name}")
    assert not missing, f"not in the API reference (docs/hooks/api_pages.py renders each public module): {missing}"


def test_api_reference_has_the_shapes_table_and_the_results(site):
    shapes = (site / "api" / "shapes" / "index.html").read_text(encoding="utf-8")
    assert "niggli_reduce" in shapes and "(2, 4, 3, 3)" in shapes and "<table>" in shapes
    results = sorted((ROOT / "benchmarks" / "results").rglob("*.md"))
    assert results
    for md in results:
        page = site / "results" / md.relative_to(ROOT / "benchmarks" / "results").with_suffix("") / "index.html"
        assert page.is_file(), f"{md} has no results page"
