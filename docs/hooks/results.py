"""mkdocs hook: the committed benchmark tables of ``benchmarks/results/`` as the site's results pages.

Every ``*.md`` under ``benchmarks/results/`` (subfolders included) becomes ``results/<same path>``, as
committed, followed by the figures it names (or that share its name) and links to its JSON; the PNG and
JSON files are copied next to it. The pages join the "Results" section of the nav, grouped by topic, and
the marker ``<!-- results-list -->`` of ``results/index.md`` becomes a list of them. Nothing is copied
into ``docs/``: rerunning a benchmark updates the site at its next build.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File

SOURCE = Path("benchmarks") / "results"
SECTION = "Results"
MARKER = "<!-- results-list -->"
log = logging.getLogger(f"mkdocs.hooks.{__name__}")

#: Topic of a results file, by the start of its path (first match wins).
GROUPS = (
    ("Reducer", ("reducer_", "reduced_forms")),
    ("Losses", ("loss_cost", "continuity", "proxy_")),
    ("Ablation (MLP)", ("ablation_",)),
    ("Generative models", ("generative/", "generative")),
    ("Dataset command", ("cli_",)),
)

_state: dict = {}


def _group(rel: str) -> str:
    for title, prefixes in GROUPS:
        if rel.startswith(prefixes):
            return title
    return "Other"


def _title(text: str, rel: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip().replace("`", "")
    return rel


def _figures(md: Path, text: str, stems: set[str]) -> list[Path]:
    """PNG files of ``md``'s folder that its text names, or whose name is its own plus a suffix (and not
    that of a longer results file: ``ablation_carbon_24_small_*`` belongs to ``ablation_carbon_24_small``)."""
    found = []
    for png in sorted(md.parent.glob("*.png")):
        own = png.stem == md.stem or png.stem.startswith(md.stem + "_")
        longer = any(s != md.stem and s.startswith(md.stem + "_") and png.stem.startswith(s) for s in stems)
        if png.name in text or (own and not longer):
            found.append(png)
    return found


def on_config(config):
    root = Path(config.config_file_path).parent
    source = root / SOURCE
    pages = []
    if source.is_dir():
        for md in sorted(source.rglob("*.md")):
            rel = md.relative_to(source).as_posix()
            text = md.read_text(encoding="utf-8")
            pages.append({"path": md, "rel": rel, "title": _title(text, rel), "group": _group(rel)})
    else:
        log.warning("results: %s not found: the site has no results pages", source)
    _state.update(root=root, source=source, pages=pages)
    groups: dict[str, list] = {}
    for p in pages:
        groups.setdefault(p["group"], []).append({p["title"]: f"results/{p['rel']}"})
    ordered = [{title: groups[title]} for title, _ in GROUPS if title in groups]
    ordered += [{"Other": groups["Other"]}] if "Other" in groups else []
    for entry in config.nav or []:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION] = list(entry[SECTION]) + ordered
            break
    else:
        log.warning("results: the nav has no %r section to hold the results pages", SECTION)
    return config


def on_files(files, config):
    source, pages = _state["source"], _state["pages"]
    stems_by_dir: dict[Path, set[str]] = {}
    for p in pages:
        stems_by_dir.setdefault(p["path"].parent, set()).add(p["path"].stem)
    copied = set()
    for p in pages:
        md, rel = p["path"], p["rel"]
        text = md.read_text(encoding="utf-8")
        extra = [f"\n\n---\n\n*This page is `benchmarks/results/{rel}` as committed: rerunning the command "
                 "above rewrites it.*"]
        figures = _figures(md, text, stems_by_dir[md.parent])
        if figures:
            extra.append("\n\n## Figures\n")
            extra += [f"\n![{png.stem}]({png.name})\n" for png in figures]
        data = sorted(j.name for j in md.parent.glob(md.stem + "*.json")
                      if not any(s != md.stem and s.startswith(md.stem + "_") and j.stem.startswith(s)
                                 for s in stems_by_dir[md.parent]))
        if data:
            extra.append("\nRaw numbers: " + ", ".join(f"[`{name}`]({name})" for name in data) + ".\n")
        files.append(File.generated(config, f"results/{rel}", content=text.rstrip() + "".join(extra)))
        for asset in [*figures, *(md.parent / name for name in data)]:
            uri = "results/" + asset.relative_to(source).as_posix()
            if uri not in copied:
                copied.add(uri)
                files.append(File.generated(config, uri, abs_src_path=str(asset)))
    return files


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    lines = []
    current = None
    order = [t for t, _ in GROUPS] + ["Other"]
    for p in sorted(_state["pages"], key=lambda p: (order.index(p["group"]), p["rel"])):
        if p["group"] != current:
            current = p["group"]
            lines += ["", f"**{current}**", ""]
        link = Path(p["rel"]).as_posix()
        lines.append(f"- [{p['title']}]({link}) (`benchmarks/results/{p['rel']}`)")
    return markdown.replace(MARKER, "\n".join(lines).strip() + "\n")
