"""README's "How it works" tree names every module of ``operators/`` and ``pipeline/`` where it is, and nothing
that is not there."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION_COLUMN = 22  # names start left of it; a line starting there continues a description


def tree_entries(readme: str) -> set[str]:
    """Paths the tree names: folders open a level by their indentation, files are the names that start a line
    (``metrics.py logs.py``: both)."""
    block = readme.split("## How it works", 1)[1].split("```", 2)[1]
    entries, folders = set(), []  # folders: (indent, name) of the open folders
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent >= DESCRIPTION_COLUMN:
            continue
        folders = [(i, f) for i, f in folders if i < indent]
        names = []
        for token in line.split():
            if not token.endswith((".py", "/")):
                break
            names.append(token)
        for name in names:
            path = "/".join([*(f for _, f in folders), name.rstrip("/")])
            entries.add(path + ("/" if name.endswith("/") else ""))
        if len(names) == 1 and names[0].endswith("/"):
            folders.append((indent, names[0].rstrip("/")))
    return entries


def test_tree_entries_reads_folders_files_and_descriptions():
    rows = [("a/", "x"), ("  b.py", "y"), ("  c.py d.py", "z"), ("", "e.py continues a description"), ("  f/", "w"),
            ("    g.py", "v"), ("h/", "")]
    text = "## How it works\n\n```\n" + "".join(f"{n.ljust(DESCRIPTION_COLUMN)}{d}\n" for n, d in rows) + "```\n"
    assert tree_entries(text) == {"a/", "a/b.py", "a/c.py", "a/d.py", "a/f/", "a/f/g.py", "h/"}


def test_the_readme_tree_names_every_module_where_it_is():
    named = tree_entries((ROOT / "README.md").read_text())
    modules = {str(p.relative_to(ROOT)) for pkg in ("operators", "pipeline") for p in (ROOT / pkg).rglob("*.py")
               if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "modules missing from README's tree"
    assert sorted(n for n in named if n.endswith(".py") and not (ROOT / n).is_file()) == [], \
        "README's tree names files that do not exist"
