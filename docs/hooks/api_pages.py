"""mkdocs hook: one API reference page per public module of soft_niggli, found when the site is built.

Every module whose dotted path has no part starting with ``_`` gets ``api/<module path>.md``, a
``::: module`` block that mkdocstrings renders from the docstrings. A module renders the names of its
``__all__`` that it defines itself, or that come from a private module; a name it re-exports from
another public module is listed as a link to the entry there, so each object is documented once. The
pages join the "API reference" section of the nav, in module order, and the marker
``<!-- soft_niggli.__all__ -->`` of ``api/index.md`` becomes the table of the top-level names.

The module tree is read statically with griffe (no import), so a module that moves or appears needs no
edit here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import griffe
from mkdocs.structure.files import File

from griffe_rst import escape_pipes, resolver, to_markdown

PACKAGE = "soft_niggli"
SECTION = "API reference"
MARKER = "<!-- soft_niggli.__all__ -->"
log = logging.getLogger(f"mkdocs.hooks.{__name__}")


@dataclass
class ModulePage:
    path: str  # dotted module path
    render: list[str] = field(default_factory=list)  # names of __all__ rendered on this page
    links: dict[str, str] = field(default_factory=dict)  # re-exported name -> identifier of its entry
    has_all: bool = True  # without __all__, mkdocstrings' own choice of public members is rendered

    @property
    def uri(self) -> str:
        return f"api/{self.path}.md"


_state: dict = {}


def _public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


def _exports(module) -> list[str]:
    names = module.exports
    return [n if isinstance(n, str) else n.name for n in names] if names is not None else []


def _walk(module) -> list:
    found = [module]
    for name, sub in sorted(module.modules.items()):
        if not sub.is_alias and _public(sub.path):
            found += _walk(sub)
    return found


def _canonical(module, name: str) -> str:
    """Path of the object that ``module.name`` is (following imports), or ``module.name`` itself."""
    member = module.members.get(name)
    if member is not None and member.is_alias:
        try:
            return member.final_target.path
        except Exception:  # noqa: BLE001 - an import griffe cannot follow (outside the package)
            return member.target_path
    return f"{module.path}.{name}"


def load_pages(root: Path) -> tuple[object, list[ModulePage]]:
    """The package as griffe sees it and the API page of each public module (packages first).

    An object is rendered where it is defined when that module is public and exports it; otherwise
    (defined in a private module) by the public module exporting it whose path shares the most with
    the definition's, the shortest such path on a tie (``soft_niggli.testing`` for an object of
    ``soft_niggli.testing._strategies``).
    """
    package = griffe.load(PACKAGE, search_paths=[str(root)], allow_inspection=True, resolve_aliases=False)
    modules = _walk(package)
    exported = {m.path: _exports(m) for m in modules}
    exporters: dict[str, list[str]] = {}  # canonical path -> public "module.name" exporting it
    for module in modules:
        for name in exported[module.path]:
            exporters.setdefault(_canonical(module, name), []).append(f"{module.path}.{name}")

    def common(a: str, b: str) -> int:
        n = 0
        for x, y in zip(a.split("."), b.split(".")):
            if x != y:
                break
            n += 1
        return n

    homes = {}
    for canonical, where in exporters.items():
        if canonical in where:
            homes[canonical] = canonical
        else:
            homes[canonical] = min(where, key=lambda w: (-common(w.rpartition(".")[0], canonical), len(w), w))

    pages = []
    for module in modules:
        page = ModulePage(module.path, has_all=module.exports is not None)
        for name in exported[module.path]:
            where = homes[_canonical(module, name)]
            if where == f"{module.path}.{name}":
                page.render.append(name)
            else:
                page.links[name] = where
        pages.append(page)
    return package, pages


def _page_markdown(page: ModulePage) -> str:
    lines = [f"# `{page.path}`", "", f"::: {page.path}", "    options:", "      show_root_heading: false",
             "      show_root_toc_entry: false"]
    if page.render:
        lines.append("      members:")
        lines += [f"        - {name}" for name in page.render]
    elif page.has_all:
        lines.append("      members: false")
    if page.links:
        lines += ["", "## Re-exported here", "",
                  f"These names of `{page.path}.__all__` are documented where they are defined:", ""]
        lines += [f"- [`{name}`][{target}] (`{target}`)" for name, target in page.links.items()]
    return "\n".join(lines) + "\n"


def _nav_tree(pages: list[ModulePage]) -> list:
    """Nav entries: top-level modules in order, each package as a section holding its own page first."""
    by_path = {p.path: p for p in pages}

    def entries(parent: str) -> list:
        children = sorted(p for p in by_path if p.rpartition(".")[0] == parent)
        result = []
        for child in children:
            grandchildren = [p for p in by_path if p.rpartition(".")[0] == child]
            if grandchildren:
                result.append({child: [{child: by_path[child].uri}, *entries(child)]})
            else:
                result.append({child: by_path[child].uri})
        return result

    return entries(PACKAGE)


def on_config(config):
    root = Path(config.config_file_path).parent
    package, pages = load_pages(root)
    _state["package"], _state["pages"] = package, [p for p in pages if p.path != PACKAGE]
    _state["top"] = next(p for p in pages if p.path == PACKAGE)
    for entry in config.nav or []:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION] = list(entry[SECTION]) + _nav_tree(_state["pages"])
            break
    else:
        log.warning("api_pages: the nav has no %r section to hold the module pages", SECTION)
    return config


def on_files(files, config):
    for page in _state["pages"]:
        files.append(File.generated(config, page.uri, content=_page_markdown(page)))
    return files


def _summary(collection, path: str) -> str:
    """First paragraph of the docstring of the object at ``path``, as Markdown on one line."""
    try:
        obj = collection[path]
        while obj.is_alias:
            obj = obj.final_target
    except Exception:  # noqa: BLE001 - not found, or an import griffe cannot follow: no summary
        return ""
    if obj.docstring is None:
        return ""
    first = " ".join(obj.docstring.value.strip().split("\n\n")[0].split())
    return to_markdown(escape_pipes(first), resolver(collection, obj))


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    package, top = _state["package"], _state["top"]
    collection = package.modules_collection
    order = [p.path for p in _state["pages"]]
    rows = ["| name | what | documented in |", "|---|---|---|"]
    linked = sorted(top.links.items(), key=lambda item: (order.index(item[1].rpartition(".")[0])
                                                         if item[1].rpartition(".")[0] in order else len(order)))
    for name, target in linked:
        module = target.rpartition(".")[0]
        rows.append(f"| [`{name}`][{target}] | {_summary(collection, target)} | [`{module}`]({module}.md) |")
    for name in top.render:  # documented on this page, below the table
        rows.append(f"| [`{name}`][{PACKAGE}.{name}] | {_summary(collection, f'{PACKAGE}.{name}')} | this page |")
    text = "\n".join(rows)
    if top.render:
        text += "\n\n" + f"::: {PACKAGE}\n    options:\n      show_root_heading: false\n      members:\n"
        text += "".join(f"        - {name}\n" for name in top.render)
    return markdown.replace(MARKER, text)
