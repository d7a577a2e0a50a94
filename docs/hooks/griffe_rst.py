"""Griffe extension for the API reference: soft_niggli's reST docstring markup, rendered as Markdown.

The docstrings are Google-style (``Args:``, ``Returns:``) with reST inside. Before mkdocstrings renders
them, this extension rewrites, outside code:

* roles (``:func:`~soft_niggli.canonical.reduced_forms```, ``:class:`Status```, ``:meth:``, ``:data:``,
  ``:attr:``, ``:mod:``) into links to the object's entry, or plain code where the site documents no
  such object (an optional cross-reference: never a warning);
* doctest examples (``>>>`` up to the next blank line) into ``pycon`` code blocks (Markdown would read
  ``>>>`` as nested quotes);
* literal blocks (a paragraph ending in ``::`` and the indented block after it) into code blocks, and
  the body of an ``Example:`` section into the description;
* simple tables (columns framed by ``=====  =====`` lines) into Markdown tables;

and it reads ``#:`` comments before or after a module or class attribute as its docstring, as Sphinx
does. Loaded by mkdocstrings (``extensions:`` in mkdocs.yml); :func:`to_markdown` is also used by the
hooks for text they take from docstrings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from griffe import Docstring, Extension

_ROLE = re.compile(r":(?:py:)?(func|meth|class|data|attr|mod|exc|obj|const):`([^`]+)`")
_TABLE_BORDER = re.compile(r"^(\s*)(=+)((?:\s+=+)+)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CALLABLE_ROLES = ("func", "meth")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def role_to_html(role: str, content: str, resolve: Callable[[str], str | None]) -> str:
    """One reST role as an optional autorefs link: ``<autoref identifier=... optional><code>...``."""
    explicit = re.fullmatch(r"(.*?)\s*<(.+)>", content)
    if explicit:
        title, target = explicit.group(1), explicit.group(2)
    else:
        target = content
        short = target.startswith("~")
        target = target.lstrip("~.")
        title = target.rsplit(".", 1)[-1] if short else target
        if role in _CALLABLE_ROLES and not title.endswith(")"):
            title += "()"
    target = target.lstrip("~.")
    identifier = resolve(target) or target
    title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'


def _roles(line: str, resolve: Callable[[str], str | None]) -> str:
    # Leave code spans alone: split on backtick runs of two or more (reST ``literal`` and Markdown).
    parts = re.split(r"(``.*?``)", line)
    return "".join(p if p.startswith("``") else _ROLE.sub(lambda m: role_to_html(m.group(1), m.group(2), resolve), p)
                   for p in parts)


def escape_pipes(text: str) -> str:
    """``|`` escaped for a Markdown table cell, except inside code spans (where the table parser
    already leaves it alone, and a backslash would show)."""
    parts = re.split(r"(`+[^`]*?`+)", text)
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def _table(lines: list[str], start: int) -> tuple[list[str], int] | None:
    """The reST simple table whose first border is ``lines[start]`` (a header row, then the body) as
    Markdown lines, and the index after it; ``None`` if it is not one."""
    spans = [m.start() for m in re.finditer(r"=+", lines[start])]
    borders, j = [start], start + 1
    while j < len(lines) and len(borders) < 3:
        if _TABLE_BORDER.match(lines[j]):
            borders.append(j)
        j += 1
    if len(borders) < 3:
        return None

    def rows(first: int, last: int) -> list[list[str]]:
        found: list[list[str]] = []
        for line in lines[first + 1:last]:
            if not line.strip():
                continue
            cells = [line[lo:(spans[k + 1] if k + 1 < len(spans) else None)].strip() for k, lo in enumerate(spans)]
            if found and not cells[0]:  # a continuation line: its cells extend the row above
                found[-1] = [f"{a} {b}".strip() for a, b in zip(found[-1], cells)]
            else:
                found.append(cells)
        return found

    def row(cells: list[str]) -> str:
        return pad + "| " + " | ".join(escape_pipes(c) for c in cells) + " |"

    pad = " " * _indent(lines[start])
    header, body = rows(borders[0], borders[1]), rows(borders[1], borders[2])
    if len(header) != 1:
        return None
    return ["", row(header[0]), pad + "|" + "---|" * len(spans), *map(row, body), ""], borders[2] + 1


def to_markdown(text: str, resolve: Callable[[str], str | None] = lambda target: None) -> str:
    """``text`` (a docstring with reST markup) as Markdown; ``resolve`` maps a role's target to the
    identifier of its documented entry (``None``: unknown, rendered as plain code)."""
    lines = text.splitlines()
    out: list[str] = []
    i, in_fence = 0, False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        stripped = line.strip()
        # A Google "Example:" section: its indented body is dedented to the title's level, so that
        # the doctest in it becomes a code block of the description (not an indented code block).
        if re.fullmatch(r"Examples?:", stripped):
            base, j = _indent(line), i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                j += 1
            body = [b for b in lines[i + 1:j] if b.strip()]
            if body:
                cut = min(_indent(b) for b in body) - base
                lines[i + 1:j] = [b[cut:] if b.strip() else "" for b in lines[i + 1:j]]
                out.append(line)
                if lines[i + 1].strip():
                    out.append("")
                i += 1
                continue
        # A literal block: "text::", a blank line, then a block indented deeper than the paragraph.
        if stripped.endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            base = _indent(line)
            j = i + 2
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                block = []
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                    block.append(lines[j])
                    j += 1
                while block and not block[-1].strip():
                    block.pop()
                deepest = min(_indent(b) for b in block if b.strip())
                if stripped != "::":
                    head = line.rstrip()[:-2].rstrip() if stripped.endswith(" ::") else line.rstrip()[:-1]
                    out.append(_roles(head, resolve))
                pad = " " * base
                out += ["", pad + "```python", *[pad + b[deepest:] if b.strip() else "" for b in block],
                        pad + "```", ""]
                i = j
                continue
        # A doctest example: ">>>" lines and their output, up to a blank line.
        if stripped.startswith(">>>"):
            base = _indent(line)
            j = i
            while j < len(lines) and lines[j].strip() and _indent(lines[j]) >= base:
                j += 1
            pad = " " * base
            if out and out[-1].strip():
                out.append("")
            out += [pad + "```pycon", *[pad + b[base:] for b in lines[i:j]], pad + "```", ""]
            i = j
            continue
        table = _table(lines, i) if _TABLE_BORDER.match(line) else None
        if table:
            rows, i = table
            out += [_roles(r, resolve) for r in rows]
            continue
        out.append(_roles(line, resolve))
        i += 1
    return "\n".join(out)


_SOURCE_LINES: dict[Path, list[str]] = {}


def _comment_docstring(filepath, lineno: int) -> str | None:
    """The ``#:`` comment of the assignment at ``lineno`` (1-based): the lines before it, else the end of
    its own line."""
    path = Path(filepath)
    if path not in _SOURCE_LINES:
        try:
            _SOURCE_LINES[path] = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            _SOURCE_LINES[path] = []
    lines = _SOURCE_LINES[path]
    if not 0 < lineno <= len(lines):
        return None
    before, k = [], lineno - 2
    while k >= 0 and lines[k].strip().startswith("#:"):
        before.insert(0, lines[k].strip()[2:].strip())
        k -= 1
    if before:
        return "\n".join(before)
    trailing = re.search(r"#:\s*(.*)$", lines[lineno - 1])
    return trailing.group(1).strip() if trailing else None


class ReSTDocstrings(Extension):
    """The rewriting described in the module docstring."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if attr.docstring is None and getattr(node, "lineno", None) and attr.filepath:
            filepath = attr.filepath[0] if isinstance(attr.filepath, list) else attr.filepath
            text = _comment_docstring(filepath, node.lineno)
            if text:
                attr.docstring = Docstring(text, lineno=node.lineno, parent=attr)

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value, resolver(loader.modules_collection, obj))


def resolver(collection, obj) -> Callable[[str], str | None]:
    """Maps a role's target, as written in ``obj``'s docstring, to the path of the object it names:
    looked up from ``obj``'s own scope outwards (class, module, packages), imports followed."""

    def resolve(target: str) -> str | None:
        scopes, scope = [], obj
        while scope is not None:
            scopes.append(scope.path)
            scope = scope.parent
        for candidate in [f"{s}.{target}" for s in scopes] + [target]:
            try:
                found = collection[candidate]
                while found.is_alias:
                    found = found.final_target
            except Exception:  # noqa: BLE001 - not found, or an import griffe cannot follow
                continue
            return found.path
        return None

    return resolve
