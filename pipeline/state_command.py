"""``tickcast state inspect DIR``: what a checkpoint store holds, per partition, as a table or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

from pipeline import console
from pipeline.checkpoint import CheckpointStore, redact_uri
from pipeline.checkpoint_inventory import inventory_by_partition


def inspect_store(uri: str, as_json: bool = False) -> int:
    """Print the store's newest valid checkpoint per partition (each model's rows) and the unusable ones with
    their reason. 0: every partition has a usable checkpoint; 1: none found, or one is unusable."""
    rows = inventory_by_partition(CheckpointStore(uri))
    if not rows:
        print(f"{redact_uri(uri)}: no checkpoints (expected <dir>/<group>/<topic>/<partition>/*.json)")
        return 1
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(console.format_inventory(rows))
    return 0 if not any(r.unusable for r in rows) else 1
