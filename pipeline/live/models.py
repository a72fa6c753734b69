"""The models a run steps: the primary (its forecasts go to the output topic) and the candidates (theirs go to
the shadow topic), each a bundle with its own ``Forecaster`` (its own per-instrument state) under the same
``ForecasterConfig``.

Every batch steps every model over the same decoded ticks: ``batch.step_batch`` steps the primary (its dead
letters cover bad input), then :meth:`Models.step_candidates` steps each candidate over the same ``ticks``
table. A candidate's forecasts keep the same silent (replay) mask and the same ``output_mode`` selection as
the primary's; ticks a candidate refuses make no dead letters (the primary's already cover bad input) and are
counted in ``candidate_refused_ticks_total``. Replays (recovery, warm-up, a rewind) step every model alike, so
every guarantee of the primary (batch invariance, exactly-once, recovery) holds for each candidate.

Checkpoints hold every model's state at one offset (:meth:`Models.export_partition`, the primary first), and a
restore gives each model its own (:meth:`Models.restore_partition`). A candidate whose version the checkpoint
does not hold goes through :meth:`Models.without_state`: the one place that decides how a candidate without
state begins a partition: with ``warmup`` set, warmed by a catch-up of the window for it alone
(``warming``), not stepped by the batches on that partition (nor checkpointed there) until it has caught up
with the primary; without, EMPTY state at the resume offset, loudly.

Promotion is a configuration change and a restart: swap ``model`` and a ``candidates`` entry and restart.
Chosen over a live command (a control topic, a signal) because it is auditable (the config says which model
publishes, in version control), works as deployments already change (GitOps, a Kubernetes rollout), and adds
no control-plane input to harden; and the restart costs nothing in warmth, because the checkpoint holds the
candidate's state: the new primary resumes from its own rows (plus the usual silent replay up to the committed
offset), so its first forecast after the promotion equals what it would have published in shadow for the
same tick. The old primary may stay as a candidate (rollback = promote back). A model dropped from the config
is not restored: its state is freed and it is gone from the next checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from operators.bundle import Bundle
from operators.forecaster import Forecaster, ForecasterConfig
from pipeline import logs
from pipeline.checkpoint import DATA_ERRORS, Loaded, ModelState
from pipeline.evaluation.compare import ComparisonScorer
from pipeline.live.inflight import Batch
from pipeline.live.partitions import Partition
from pipeline.live.status import instrument_groups
from pipeline.metrics import Metrics

log = logs.get("run")

PRIMARY, CANDIDATE = "primary", "candidate"


@dataclass
class Model:
    """One model of the run: its bundle, its own forecaster (state), its role and when it started (unix s)."""

    bundle: Bundle
    forecaster: Forecaster
    role: str
    started: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.bundle.model_version


@dataclass(frozen=True)
class Shadow:
    """A candidate's forecasts for one batch: the tick rows (of ``batch.ticks``) it forecast and did not replay
    (``rows``, ``forecasts``: what is scored) and those it publishes (``out_rows``, ``out_forecasts``:
    ``output_mode`` applied)."""

    model: Model
    rows: np.ndarray
    forecasts: np.ndarray
    out_rows: np.ndarray
    out_forecasts: np.ndarray


class Models:
    """The primary and the candidates, in that order (``all``)."""

    def __init__(self, primary: Bundle, candidates: Sequence[Bundle], config: ForecasterConfig,
                 metrics: Metrics):
        self.metrics = metrics
        self.primary = Model(primary, Forecaster(primary, config), PRIMARY)
        self.candidates = tuple(Model(b, Forecaster(b, config), CANDIDATE) for b in candidates)
        self.all = (self.primary, *self.candidates)
        self.comparison = ComparisonScorer(primary.horizon, primary.model_version,
                                           [c.version for c in self.candidates],
                                           started_at={m.version: m.started for m in self.all}) \
            if self.candidates else None
        self.warming = None  # warming.Warming: candidates without state catch up (``warm_with``)
        for m in self.all:
            metrics.models_info.labels(m.version, m.role, str(m.bundle.horizon)).set(1)
            metrics.model_started.labels(m.version, m.role).set(m.started)

    def __len__(self) -> int:
        return len(self.all)

    def warm_with(self, warming) -> None:
        """Candidates without state for a partition are warmed by ``warming`` (a ``warming.Warming``)."""
        self.warming = warming

    def advance_warmup(self, max_records: int) -> None:
        """One bounded round of the candidates' catch-ups (between batches, on the loop's thread)."""
        if self.warming is not None:
            self.warming.advance(max_records)

    def close(self) -> None:
        if self.warming is not None:
            self.warming.close()

    # -- stepping -----------------------------------------------------------------------------
    def step_candidates(self, batch: Batch, select) -> list[Shadow]:
        """Step every candidate over the batch's ticks (after the primary); each one's forecasts with the
        batch's silent mask and ``select(ticks, rows) -> positions`` (``output_mode``) applied."""
        shadows = []
        for model in self.candidates:
            waiting = self.warming.waiting(model.version) if self.warming is not None else set()
            ticks, positions = batch.ticks, None
            if waiting:  # partitions it is still catching up on: not stepped here
                mine = ~np.isin(batch.ticks.column("partition").to_numpy(), list(waiting))
                if not mine.all():
                    ticks, positions = batch.ticks.filter(mine), np.flatnonzero(mine)
            result = model.forecaster.step(ticks)
            refused = int(np.count_nonzero(result.reasons))
            if refused:
                self.metrics.candidate_refused_ticks.labels(model.version).inc(refused)
            rows, forecasts = result.rows, result.forecasts
            if positions is not None:  # rows of the filtered table -> rows of batch.ticks
                rows = positions[rows]
            if batch.silent is not None:
                loud = ~batch.silent[batch.idx[rows]]
                rows, forecasts = rows[loud], forecasts[loud]
            keep = select(batch.ticks, rows)
            shadows.append(Shadow(model, rows, forecasts, rows[keep], forecasts[keep]))
        return shadows

    # -- one partition's state ------------------------------------------------------------------
    def export_partition(self, part_id: int) -> list[ModelState]:
        """Every model's state rows of a partition, the primary first (``CheckpointStore.write_models``); not a
        candidate still catching up there (its state is not at the checkpoint's offset)."""
        return [ModelState(m.version, m.forecaster.export_partition(part_id), m.bundle.feature_spec.to_dict())
                for m in self.all if m.role == PRIMARY or self.warming is None
                or part_id not in self.warming.waiting(m.version)]

    def drop_partition(self, part_id: int) -> None:
        """Forget a partition in every model (and in the comparison); a candidate's catch-up of it ends."""
        if self.warming is not None:
            self.warming.cancel(self.warming.partitions.tp_of(part_id))
        for m in self.all:
            m.forecaster.drop_partition(part_id)
        if self.comparison is not None:
            self.comparison.drop_partition(part_id)

    def restore_candidates(self, partition: Partition, loaded: Loaded | None) -> None:
        """After the primary's rows are in (or no checkpoint is used): each candidate's own rows from
        ``loaded`` when it holds them, else :meth:`without_state`. Without a checkpoint (warm-up, replay from
        the start, empty) every model starts empty and steps the same replay: nothing to do here."""
        if loaded is None:
            return
        for model in self.candidates:
            state = loaded.states.get(model.version)
            if state is None:
                self.without_state(model, partition, "the checkpoint has no state of this model",
                                   loaded.manifest.offset)
                continue
            try:
                model.forecaster.import_partition(partition.part_id, state)
            except DATA_ERRORS as exc:
                model.forecaster.drop_partition(partition.part_id)
                self.without_state(model, partition, f"its state in the checkpoint is unusable: {exc}",
                                   loaded.manifest.offset)

    def without_state(self, model: Model, partition: Partition, why: str, resume_at: int | None = None) -> None:
        """The seam for a candidate that has no state for a partition the run resumes from a checkpoint: with
        ``warmup`` set (``warm_with``), a catch-up replays the warm-up window for this candidate alone and it
        joins the batches once it reached the primary; else (or the window holds no record) it starts EMPTY at
        the resume offset ``resume_at`` (and steps what the partition replays and reads from there on)."""
        model.forecaster.drop_partition(partition.part_id)
        if self.warming is not None and self.warming.begin(model, partition, resume_at):
            return
        log.warning(f"candidate {model.version} has no state for {partition.where}: starts empty",
                    extra={"partition": partition.where, "model_version": model.version, "why": why})

    # -- scoring ------------------------------------------------------------------------------
    def score(self, batch: Batch) -> None:
        """Feed a settled batch's forecasts of every model to the comparison (no-op without candidates): the
        ticks any model forecast, NaN where one did not."""
        if self.comparison is None:
            return
        rows, shadows = batch.rows, batch.shadows
        for s in shadows:
            rows = np.union1d(rows, s.rows)
        if len(rows):
            table = np.full((len(rows), len(self.all)), np.nan)
            for j, (r, f) in enumerate([(batch.rows, batch.forecasts), *((s.rows, s.forecasts) for s in shadows)]):
                table[np.searchsorted(rows, r), j] = f[:, 0] if f.ndim == 2 else f
            keys, group, price = instrument_groups(batch.ticks, rows)
            self.comparison.update(keys, group, price, table)
        self.comparison.forget(batch.result.expired)

    def publish(self) -> None:
        """The comparison's snapshot to the metrics (the status cadence: a snapshot costs some 15 ms)."""
        if self.comparison is not None:
            self.metrics.publish_comparison(self.comparison.snapshot())

