"""The metric names a /metrics text offers to a query: its samples' names and every declared family's."""

from __future__ import annotations

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created"), "info": ("_info",)}


def exported_names(metrics_text: str) -> set[str]:
    """Sample names, and for each ``# TYPE`` line the names its samples take (a labelled family that has no
    series yet is still declared: a query of it is valid and returns nothing until it has)."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            names |= {name + s for s in _SUFFIXES.get(kind, ())}
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names
