"""Model bundles: the Keras LSTM's definition, training, saving and loading.

A bundle is a directory:

    model.keras    the Keras model (loaded in safe mode: no arbitrary code)
    bundle.json    feature spec, normalisation statistics, horizon, shape,
                   model version, and a description + hash of the training window

The model version is a hash of the weights and the serving-relevant metadata,
so two bundles with the same version forecast the same numbers, and a
``model.keras`` swapped under a ``bundle.json`` is caught at load time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from operators.errors import BundleError, InputDataError
from operators.features import (
    FeatureSpec,
    Normalisation,
    compute_features,
    log_return_target,
    previous_within_groups,
)
from operators.lstm import LSTMLayerWeights, LSTMWeights
from operators.state import StateShape
from operators.validation import RejectReason, TickColumns, out_of_order, validate_values

BUNDLE_FORMAT = "tickcast-bundle"
BUNDLE_FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
META_FILE = "bundle.json"


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN's reordered float sums make TensorFlow's numbers vary by machine
    # and thread count; tickcast wants the reference numbers reproducible.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras  # noqa: PLC0415 - TensorFlow takes seconds to import; only when needed

    return keras


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

    def check(self) -> None:
        for name in ("layers", "hidden", "horizon", "epochs", "window", "batch_size", "max_ticks"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("--validation-fraction must be in [0, 1)")


@dataclass(frozen=True)
class Bundle:
    """A loaded model bundle, ready to serve."""

    path: Path | None
    model_version: str
    feature_spec: FeatureSpec
    normalisation: Normalisation
    horizon: int
    shape: StateShape
    weights: LSTMWeights
    training: dict[str, Any] = field(default_factory=dict)
    keras_model: Any = None

    def meta(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_version": self.model_version,
            "feature_spec": self.feature_spec.to_dict(),
            "normalisation": self.normalisation.to_dict(),
            "target": {"kind": "log_return", "horizon_ticks": self.horizon},
            "architecture": {
                "layers": self.shape.layers,
                "hidden": self.shape.hidden,
                "n_features": len(self.feature_spec.names),
            },
            "training": self.training,
        }


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


def weights_from_keras(model, layers: int) -> LSTMWeights:
    lstm_weights = []
    for layer in range(layers):
        kernel, recurrent, bias = (np.asarray(w, dtype=np.float32) for w in model.get_layer(f"lstm_{layer}").get_weights())
        lstm_weights.append(LSTMLayerWeights(kernel, recurrent, bias))
    dk, db = model.get_layer("forecast").get_weights()
    return LSTMWeights(tuple(lstm_weights), np.asarray(dk, np.float32).ravel(), float(np.asarray(db).ravel()[0]))


def _version_hash(weights: LSTMWeights, meta: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for lw in weights.layers:
        for a in (lw.kernel, lw.recurrent, lw.bias):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(weights.dense_kernel, np.float32).tobytes())
    h.update(np.float32(weights.dense_bias).tobytes())
    serving = {k: meta[k] for k in ("feature_spec", "normalisation", "target", "architecture")}
    h.update(json.dumps(serving, sort_keys=True).encode())
    return h.hexdigest()[:16]


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


def sequences_from_table(ticks: pa.Table) -> Sequences:
    """Validate and group a whole tick table per instrument (file order within each).

    Features come from :func:`compute_features` with each instrument's first
    tick having no previous one: exactly what the streaming operator computes
    for an instrument it has never seen.
    """
    cols = TickColumns.from_arrow(ticks)
    reasons = validate_values(cols)
    valid = np.flatnonzero(reasons == 0)
    order = valid[np.argsort(cols.instrument_codes[valid], kind="stable")]
    codes = cols.instrument_codes[order]
    starts = np.flatnonzero(np.diff(codes, prepend=-2)) if len(order) else np.zeros(0, np.int64)
    late = out_of_order(cols.ts[order], starts, np.full(len(starts), np.iinfo(np.int64).min))
    if late.any():
        reasons[order[late]] = RejectReason.OUT_OF_ORDER
        order = order[~late]
        codes = cols.instrument_codes[order]
        starts = np.flatnonzero(np.diff(codes, prepend=-2)) if len(order) else np.zeros(0, np.int64)
    price, ts = cols.price[order], cols.ts[order]
    g = len(starts)
    has_prev = np.ones(len(order), dtype=bool)
    has_prev[starts] = False
    prev_price = previous_within_groups(price, starts, np.full(g, np.nan))
    prev_ts = previous_within_groups(ts, starts, np.zeros(g, dtype=np.int64))
    raw = compute_features(
        price, ts, cols.size[order], cols.bid[order], cols.ask[order],
        cols.bid_size[order], cols.ask_size[order], prev_price, prev_ts, has_prev,
    )
    return Sequences(
        order=order,
        group_starts=starts,
        instruments=[cols.instruments[c] for c in codes[starts]],
        raw_features=raw,
        price=price,
        ts=ts,
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
    seq = sequences_from_table(ticks)
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
    draft = Bundle(None, "", FeatureSpec(), norm, config.horizon,
                  StateShape(config.layers, config.hidden), weights, training, model)
    version = _version_hash(weights, draft.meta())
    return Bundle(None, version, draft.feature_spec, norm, config.horizon, draft.shape, weights, training, model)


def save_bundle(bundle: Bundle, directory: str | Path) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    bundle.keras_model.save(path / MODEL_FILE)
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(bundle.meta(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path / META_FILE)  # metadata last: a bundle is complete once it exists
    return path


def load_bundle(directory: str | Path) -> Bundle:
    """Load and check a bundle; refuse anything this build cannot serve exactly."""
    path = Path(directory)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise BundleError(f"model bundle {path} does not exist; create one with `tickcast train --out {path}`")
    if not meta_path.is_file() or not (path / MODEL_FILE).is_file():
        raise BundleError(
            f"{path} is not a model bundle (needs {META_FILE} and {MODEL_FILE}); create one with `tickcast train`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path} is unreadable ({exc}); retrain or restore the bundle") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path} is not a tickcast bundle (format={meta.get('format')!r})")
    if meta.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {meta.get('format_version')} at {path} is not supported by this tickcast "
            f"(it reads version {BUNDLE_FORMAT_VERSION}); retrain with this version"
        )
    try:
        spec = FeatureSpec.from_dict(meta["feature_spec"])
        norm = Normalisation.from_dict(meta["normalisation"])
        horizon = int(meta["target"]["horizon_ticks"])
        arch = meta["architecture"]
        shape = StateShape(int(arch["layers"]), int(arch["hidden"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{meta_path} is incomplete (missing or bad {exc}); retrain the bundle") from None
    if spec != FeatureSpec():
        raise BundleError(
            f"bundle {path} was trained on feature spec v{spec.version} {list(spec.names)}; this tickcast "
            f"serves v{FeatureSpec().version} {list(FeatureSpec().names)}; retrain with `tickcast train`"
        )
    if len(norm.mean) != len(spec.names) or len(norm.std) != len(spec.names):
        raise BundleError(f"{meta_path}: normalisation has the wrong number of features; retrain the bundle")
    _check_normalisation(norm, spec, meta_path)
    keras = _keras()
    _check_keras_is_safe(keras.__version__)
    try:
        model = keras.saving.load_model(path / MODEL_FILE, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; all mean "unusable file"
        raise BundleError(f"cannot load {path / MODEL_FILE} in safe mode: {exc}") from None
    _check_architecture(model, shape, len(spec.names), path)
    weights = weights_from_keras(model, shape.layers)
    bundle = Bundle(path, str(meta.get("model_version", "")), spec, norm, horizon, shape, weights,
                    dict(meta.get("training", {})), model)
    expected = _version_hash(weights, bundle.meta())
    if bundle.model_version != expected:
        raise BundleError(
            f"bundle {path}: {MODEL_FILE} does not match {META_FILE} (version {bundle.model_version}, "
            f"weights hash to {expected}); the files come from different trainings"
        )
    return bundle


# Keras before 3.9 lets a crafted .keras file run code despite safe_mode (CVE-2025-1550); pyproject.toml
# asks for at least this version, and a bundle is never opened with an older one found in the environment.
SAFE_KERAS = (3, 9)


def _check_keras_is_safe(version: str) -> None:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < SAFE_KERAS:
        raise BundleError(f"keras {version} is installed; its safe mode can be bypassed by a crafted model file "
                          f"(CVE-2025-1550): install keras>={SAFE_KERAS[0]}.{SAFE_KERAS[1]} to load bundles")


def _check_normalisation(norm: Normalisation, spec: FeatureSpec, meta_path: Path) -> None:
    """Statistics the features are divided by: a zero, negative or non-finite one would turn every tick
    into inf/NaN inputs and poison each instrument's state on its first tick."""
    bad = [f"std of {name} = {s!r}" for name, s in zip(spec.names, norm.std.tolist())
           if not (np.isfinite(s) and s > 0)]
    bad += [f"mean of {name} = {m!r}" for name, m in zip(spec.names, norm.mean.tolist()) if not np.isfinite(m)]
    if not (np.isfinite(norm.target_std) and norm.target_std > 0):
        bad.append(f"target_std = {norm.target_std!r}")
    if not np.isfinite(norm.target_mean):
        bad.append(f"target_mean = {norm.target_mean!r}")
    if bad:
        raise BundleError(f"{meta_path}: normalisation must be finite with positive standard deviations, got "
                          f"{', '.join(bad)}; retrain the bundle")


def _check_architecture(model, shape: StateShape, n_features: int, path: Path) -> None:
    def refuse(why: str) -> BundleError:
        return BundleError(f"bundle {path}: the Keras model cannot be served ({why}); retrain with `tickcast train`")

    try:
        lstms = [model.get_layer(f"lstm_{i}") for i in range(shape.layers)]
        dense = model.get_layer("forecast")
    except ValueError as exc:
        raise refuse(str(exc)) from None
    extra = [l.name for l in model.layers if l.__class__.__name__ == "LSTM" and l not in lstms]
    if extra:
        raise refuse(f"{len(extra)} more LSTM layers than bundle.json says")
    for layer in lstms:
        cfg = layer.get_config()
        wanted = {"units": shape.hidden, "activation": "tanh", "recurrent_activation": "sigmoid",
                  "use_bias": True, "return_sequences": True, "go_backwards": False, "stateful": False}
        for key, value in wanted.items():
            if cfg.get(key) != value:
                raise refuse(f"layer {layer.name} has {key}={cfg.get(key)!r}, the operator needs {value!r}")
    if lstms[0].get_weights()[0].shape[0] != n_features:
        raise refuse(f"first LSTM takes {lstms[0].get_weights()[0].shape[0]} features, the spec has {n_features}")
    dcfg = dense.get_config()
    if dcfg.get("units") != 1 or dcfg.get("activation") != "linear" or not dcfg.get("use_bias", True):
        raise refuse("the head must be Dense(1, linear, with bias)")
