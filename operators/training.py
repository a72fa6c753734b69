"""Training a bundle: the Keras LSTM's definition, sequences per instrument, windows, fit.

:func:`sequences_from_table` runs a whole table through :mod:`operators.grouping`
(validate, group per instrument, out-of-order, features: the path the
streaming operator runs per micro-batch) with nothing preceding any
instrument; reference checks and backtests share it. The bundle it produces
is saved and loaded by :mod:`operators.bundle`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from operators.bundle import Bundle, _keras, _version_hash, check_feature_names, weights_from_keras
from operators.errors import InputDataError
from operators.features import FEATURE_NAMES, FeatureSpec, Normalisation, log_return_target
from operators.grouping import Preceding, group_ticks, raw_features, refuse_late
from operators.state import StateShape
from operators.validation import TickColumns


@dataclass(frozen=True)
class TrainConfig:
    layers: int = 1
    hidden: int = 32
    horizon: int = 10  # ticks of the same instrument
    epochs: int = 4
    window: int = 128  # ticks per training sequence
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_ticks: int = 400_000  # training ticks used (the first ones, in file order)
    validation_fraction: float = 0.1
    seed: int = 0
    features: tuple[str, ...] = FEATURE_NAMES  # the model's inputs, in order (operators.features.REGISTRY)

    def check(self) -> None:
        for name in ("layers", "hidden", "horizon", "epochs", "window", "batch_size", "max_ticks"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("--validation-fraction must be in [0, 1)")
        check_feature_names(tuple(self.features), "--features")


def build_keras_model(n_features: int, layers: int, hidden: int, seed: int = 0):
    """The architecture every bundle uses: stacked LSTMs and a linear head."""
    keras = _keras()
    inputs = keras.Input(shape=(None, n_features), name="features")
    x = inputs
    for layer in range(layers):
        x = keras.layers.LSTM(
            hidden,
            return_sequences=True,
            name=f"lstm_{layer}",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2 * layer),
            recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 2 * layer + 1),
        )(x)
    out = keras.layers.Dense(1, name="forecast")(x)
    return keras.Model(inputs, out, name="tickcast_lstm")


# -- preparing sequences (shared by training, reference checks and backtests) --


@dataclass(frozen=True)
class Sequences:
    """Valid ticks of a table, grouped by instrument, in each instrument's order."""

    order: np.ndarray  # (m,) row in the source table of each grouped tick
    group_starts: np.ndarray  # (G,)
    instruments: list[str]  # (G,)
    raw_features: np.ndarray  # (m, F) float64
    price: np.ndarray  # (m,)
    ts: np.ndarray  # (m,)
    rejected: np.ndarray  # (n,) uint8 reason per source row

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(np.append(self.group_starts, len(self.order)))


def sequences_from_table(ticks: pa.Table, names: tuple[str, ...] = FEATURE_NAMES) -> Sequences:
    """Validate and group a whole tick table per instrument (file order within each); features ``names``.

    Features come from :func:`compute_features` with each instrument's first
    tick having no previous one: exactly what the streaming operator computes
    for an instrument it has never seen.
    """
    cols = TickColumns.from_arrow(ticks)
    reasons, groups = group_ticks(cols)
    groups, _ = refuse_late(cols, groups, Preceding.nothing(len(groups.starts)), reasons)
    raw, _ = raw_features(cols, groups, Preceding.nothing(len(groups.starts)), names=tuple(names))
    order = groups.order
    return Sequences(
        order=order,
        group_starts=groups.starts,
        instruments=[cols.instruments[c] for c in groups.codes.tolist()],
        raw_features=raw,
        price=cols.price[order],
        ts=cols.ts[order],
        rejected=reasons,
    )


def _table_hash(ticks: pa.Table) -> str:
    h = hashlib.sha256()
    for name in ("instrument", "ts", "price", "size"):
        if name in ticks.schema.names:
            for chunk in ticks.column(name).chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(buf)
    return h.hexdigest()


def _windows(seq: Sequences, x: np.ndarray, y: np.ndarray, window: int):
    """Cut each instrument's sequence into windows of ``window`` ticks (zero-padded)."""
    lengths = seq.lengths
    n_win_per_group = -(-lengths // window)
    win_base = np.concatenate([[0], np.cumsum(n_win_per_group)[:-1]]).astype(np.int64)
    k = np.arange(len(seq.order)) - np.repeat(seq.group_starts, lengths)
    win = np.repeat(win_base, lengths) + k // window
    pos = k % window
    n_win = int(n_win_per_group.sum())
    xw = np.zeros((n_win, window, x.shape[1]), dtype=np.float32)
    yw = np.zeros((n_win, window, 1), dtype=np.float32)
    ww = np.zeros((n_win, window), dtype=np.float32)
    xw[win, pos] = x
    finite = np.isfinite(y)
    yw[win[finite], pos[finite], 0] = y[finite]
    ww[win[finite], pos[finite]] = 1.0
    start_ts = np.full(n_win, np.iinfo(np.int64).max)
    np.minimum.at(start_ts, win, seq.ts)
    return xw, yw, ww, start_ts, win


def train(
    ticks: pa.Table,
    config: TrainConfig,
    source: str = "",
    on_epoch: Callable[[int, dict], None] | None = None,
) -> Bundle:
    """Train a bundle on a canonical tick table (see ``operators.validation``)."""
    config.check()
    keras = _keras()
    keras.utils.set_random_seed(config.seed)
    if ticks.num_rows > config.max_ticks:
        ticks = ticks.slice(0, config.max_ticks)
    seq = sequences_from_table(ticks, tuple(config.features))
    if len(seq.order) < 2 * config.horizon:
        raise InputDataError(
            f"only {len(seq.order)} valid ticks to train on; need well over the horizon "
            f"({config.horizon}); give a larger --input or a smaller --horizon"
        )
    target = log_return_target(seq.price, seq.group_starts, config.horizon)
    *_, start_ts, win = _windows(seq, seq.raw_features, target, config.window)
    # The windows that start last (in event time) are held out for validation.
    n_val = int(round(len(start_ts) * config.validation_fraction))
    val_cut = np.sort(start_ts)[len(start_ts) - n_val] if n_val else np.iinfo(np.int64).max
    # Normalisation statistics come from the training windows only.
    in_train = start_ts[win] < val_cut
    norm = Normalisation.fit(seq.raw_features[in_train], target[in_train])
    x = norm.apply(seq.raw_features)
    y = (target - norm.target_mean) / norm.target_std
    xw, yw, ww, start_ts, _ = _windows(seq, x, y, config.window)
    tr, va = start_ts < val_cut, start_ts >= val_cut

    model = build_keras_model(x.shape[1], config.layers, config.hidden, seed=config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mse")

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if on_epoch is not None:
                on_epoch(epoch, dict(logs or {}))

    history = model.fit(
        xw[tr], yw[tr], sample_weight=ww[tr],
        validation_data=(xw[va], yw[va], ww[va]) if va.any() else None,
        epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=0,
        callbacks=[_Progress()],
    )
    weights = weights_from_keras(model, config.layers)
    training = {
        "source": source,
        "rows": int(ticks.num_rows),
        "valid_ticks": int(len(seq.order)),
        "instruments": len(seq.instruments),
        "first_ts": int(seq.ts.min()),
        "last_ts": int(seq.ts.max()),
        "sha256": _table_hash(ticks),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "loss": [float(v) for v in history.history.get("loss", [])],
        "val_loss": [float(v) for v in history.history.get("val_loss", [])],
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    draft = Bundle(None, "", FeatureSpec(names=tuple(config.features)), norm, config.horizon,
                  StateShape(config.layers, config.hidden), weights, training, model)
    version = _version_hash(weights, draft.meta())
    return Bundle(None, version, draft.feature_spec, norm, config.horizon, draft.shape, weights, training, model)
