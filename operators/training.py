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

from operators.bundle import Bundle, _keras, _version_hash, check_feature_names, stack_of_keras_file, weights_from_keras
from operators.errors import InputDataError
from operators.features import FEATURE_NAMES, FeatureSpec, Normalisation, log_return_target
from operators.grouping import Preceding, group_ticks, raw_features, refuse_late
from operators.outputs import OutputSpec, check_outputs, outputs_for, targets
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
    cell: str = "lstm"  # or "gru"
    outputs: tuple[OutputSpec, ...] = ()  # () : one mean output at ``horizon`` (the default model)
    features: tuple[str, ...] = FEATURE_NAMES  # the model's inputs, in order (operators.features.REGISTRY)

    def check(self) -> None:
        for name in ("layers", "hidden", "horizon", "epochs", "window", "batch_size", "max_ticks"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("--validation-fraction must be in [0, 1)")
        check_feature_names(tuple(self.features), "--features")
        if self.cell not in CELLS:
            raise ValueError(f"--cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.outputs:
            check_outputs(self.outputs)

    @property
    def default_model(self) -> bool:
        """Stacked LSTMs and one mean output: the model bundles hold as LSTM weights (and always did)."""
        return self.cell == "lstm" and not self.outputs

    @property
    def output_list(self) -> tuple[OutputSpec, ...]:
        return self.outputs or outputs_for([self.horizon])

    @classmethod
    def with_outputs(cls, horizons: str, quantiles: str = "", **kwargs) -> TrainConfig:
        """``--horizons``/``--quantiles`` as given (empty horizons: the single ``horizon``)."""
        if not horizons and quantiles:
            horizons = str(kwargs.get("horizon", cls.horizon))
        if not horizons:
            return cls(**kwargs)
        outputs = outputs_for(horizons, quantiles)
        if len(outputs) == 1 and outputs[0].kind == "mean":  # one mean output: the default model at that horizon
            return cls(**(kwargs | {"horizon": outputs[0].horizon}))
        return cls(**(kwargs | {"horizon": outputs[0].horizon, "outputs": outputs}))


CELLS = ("lstm", "gru")


def build_keras_model(n_features: int, layers: int, hidden: int, seed: int = 0, cell: str = "lstm",
                      outputs: int = 1):
    """The architecture ``tickcast train`` builds: stacked LSTMs (or GRUs) and a linear head of one unit
    per output."""
    keras = _keras()
    layer_class = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell]
    inputs = keras.Input(shape=(None, n_features), name="features")
    x = inputs
    for layer in range(layers):
        x = layer_class(
            hidden,
            return_sequences=True,
            name=f"{cell}_{layer}",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2 * layer),
            recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 2 * layer + 1),
        )(x)
    out = keras.layers.Dense(outputs, name="forecast")(x)
    return keras.Model(inputs, out, name="tickcast_lstm" if cell == "lstm" else f"tickcast_{cell}")


def make_loss(outputs: tuple[OutputSpec, ...]):
    """Per output, squared error (means) or pinball loss (quantiles) on the normalised target; a tick
    whose target lies past its sequence's end for an output (weight 0 for it) counts for none of that
    output's loss. Returns a Keras loss of (y_true, y_pred) where y_true holds the targets, then the weights."""
    import tensorflow as tf  # noqa: PLC0415 - the training backend; only when training

    k = len(outputs)
    q = tf.constant([o.quantile if o.kind == "quantile" else 0.0 for o in outputs], tf.float32)
    is_q = tf.constant([o.kind == "quantile" for o in outputs])

    def loss(y_true, y_pred):
        y, w = y_true[..., :k], y_true[..., k:]
        d = y - y_pred
        per = tf.where(is_q, tf.maximum(q * d, (q - 1.0) * d), tf.square(d))
        return tf.reduce_sum(per * w, axis=-1) / float(k)

    return loss


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
    xw[win, pos] = x
    if y.ndim == 2:  # several outputs: targets then per-output weights (1 where the target is known)
        yw = np.zeros((n_win, window, 2 * y.shape[1]), dtype=np.float32)
        finite = np.isfinite(y)
        yw[win, pos] = np.concatenate([np.where(finite, y, 0.0), finite], axis=1)
        ww = np.zeros((n_win, window), dtype=np.float32)
        ww[win, pos] = finite.any(axis=1)
    else:
        yw = np.zeros((n_win, window, 1), dtype=np.float32)
        ww = np.zeros((n_win, window), dtype=np.float32)
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
    longest = max(o.horizon for o in config.output_list)
    if len(seq.order) < 2 * longest:
        raise InputDataError(
            f"only {len(seq.order)} valid ticks to train on; need well over the horizon "
            f"({longest}); give a larger --input or a smaller --horizon"
        )
    if config.default_model:
        target = log_return_target(seq.price, seq.group_starts, config.horizon)
    else:
        target = targets(seq.price, seq.group_starts, config.output_list)
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

    k = len(config.output_list)
    model = build_keras_model(x.shape[1], config.layers, config.hidden, seed=config.seed, cell=config.cell, outputs=k)
    loss = "mse" if config.default_model else make_loss(config.output_list)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)

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
    training = {
        "source": source,
        "rows": int(ticks.num_rows),
        "valid_ticks": int(len(seq.order)),
        "instruments": len(seq.instruments),
        "first_ts": int(seq.ts.min()),
        "last_ts": int(seq.ts.max()),
        "sha256": _table_hash(ticks),
        "config": _config_dict(config),
        "loss": [float(v) for v in history.history.get("loss", [])],
        "val_loss": [float(v) for v in history.history.get("val_loss", [])],
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if not config.default_model:
        return _own_stack_bundle(model, norm, config, training)
    weights = weights_from_keras(model, config.layers)
    draft = Bundle(None, "", FeatureSpec(names=tuple(config.features)), norm, config.horizon,
                   StateShape(config.layers, config.hidden), weights, training, model)
    version = _version_hash(weights, draft.meta())
    return Bundle(None, version, draft.feature_spec, norm, config.horizon, draft.shape, weights, training, model)


def _config_dict(config: TrainConfig) -> dict:
    """The training config for bundle.json: the default model's keys exactly as before (its bundles unchanged)."""
    d = {k: getattr(config, k) for k in config.__dataclass_fields__ if k not in ("cell", "outputs", "features")}
    if not config.default_model:
        d |= {"cell": config.cell, "outputs": [o.to_dict() for o in config.output_list]}
    if tuple(config.features) != FEATURE_NAMES:
        d["features"] = list(config.features)
    return d


def _own_stack_bundle(model, norm: Normalisation, config: TrainConfig, training: dict) -> Bundle:
    """A GRU or several outputs: served as the chain the saved model file describes (as a brought model is)."""
    import tempfile  # noqa: PLC0415

    from operators.bundle import shape_of  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.keras"
        model.save(path)
        stack = stack_of_keras_file(path, len(config.features))
    outputs = config.output_list
    draft = Bundle(None, "", FeatureSpec(names=tuple(config.features)), norm, outputs[0].horizon, shape_of(stack),
                   None, training, model, stack, outputs, "train")
    version = _version_hash(stack, draft.meta())
    return Bundle(None, version, draft.feature_spec, norm, draft.horizon, draft.shape, None, training, model, stack,
                  outputs, "train")
