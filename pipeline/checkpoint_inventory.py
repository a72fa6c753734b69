"""What a checkpoint store holds, per partition folder (``tickcast state inspect``): the newest valid
checkpoint with each model's rows, and the unusable ones with the reason."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline.checkpoint import CheckpointStore
from pipeline.checkpoint_format import Manifest


@dataclass(frozen=True)
class ModelInventory:
    """One model's state in a checkpoint (``tickcast state inspect``)."""

    model_version: str
    rows: int
    bytes: int
    state: str  # layers x hidden


@dataclass(frozen=True)
class PartitionInventory:
    """What a store holds for one partition folder: its newest valid checkpoint and its unusable ones."""

    partition: str  # the folder below the store's root: [group/]topic/partition
    checkpoints: int
    unusable: int
    offset: int | None  # of the newest valid checkpoint; None when the folder holds none
    rows: int | None  # the primary model's
    bytes: int | None  # every data file of the checkpoint
    model_version: str | None  # the primary's
    age_s: float | None
    state: str | None  # the primary's layers x hidden
    problems: tuple[str, ...]  # "<file>: <why>" per unusable checkpoint
    models: tuple[ModelInventory, ...] = ()  # every model in the newest valid checkpoint, the primary first


def inventory_by_partition(store: CheckpointStore, now: float | None = None) -> list[PartitionInventory]:
    """:meth:`CheckpointStore.inventory` per partition folder, sorted by folder (``tickcast state inspect``)."""
    now = time.time() if now is None else now
    by_folder: dict[str, list[tuple[str, Manifest | None, str | None]]] = {}
    for path, manifest, problem in store.inventory():
        by_folder.setdefault(path.rsplit("/", 1)[0], []).append((path, manifest, problem))
    out = []
    for folder, items in sorted(by_folder.items()):
        good = [m for _, m, p in items if m is not None]
        problems = [(path, p) for path, m, p in items if p is not None]
        where = folder[len(store.root):].strip("/") if folder.startswith(store.root) else folder
        newest = max(good, key=lambda m: (m.offset, m.created_at)) if good else None
        out.append(PartitionInventory(
            partition=where, checkpoints=len(items), unusable=len(problems),
            offset=newest.offset if newest else None, rows=newest.rows if newest else None,
            bytes=newest.total_bytes if newest else None, model_version=newest.model_version if newest else None,
            age_s=round(now - newest.created_at, 1) if newest else None,
            state=f"{newest.layers}x{newest.hidden}" if newest else None,
            problems=tuple(f"{path.rsplit('/', 1)[1]}: {p}" for path, p in problems),
            models=tuple(ModelInventory(m.model_version, m.rows, m.bytes, f"{m.layers}x{m.hidden}")
                         for m in (newest.models if newest else ()))))
    return out
