"""A bundle around a Keras model trained anywhere (``tickcast bundle --keras``).

The model file is read as data (:mod:`operators.keras_file`: no Keras, no
TensorFlow, nothing in the file runs) and described as a chain the NumPy kernel
computes (:mod:`operators.keras_chain`), or refused in one line. The features it
takes are named from tickcast's feature set, in the model's input order; their
normalisation is fitted on the given ticks as ``tickcast train`` fits it (per
feature mean and standard deviation of each instrument's sequence features, and
of the log-return target over the horizon). With ``target_normalised=False``
the model's outputs are taken as forecasts as they are (target mean 0, std 1).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from operators.bundle import Bundle, _version_hash, check_feature_names, shape_of, stack_of_keras_file
from operators.errors import BundleError, InputDataError
from operators.features import FeatureSpec, Normalisation, log_return_target
from operators.outputs import OutputSpec, targets


def bundle_keras_model(model_file: str | Path, features: list[str], ticks: pa.Table, horizon: int = 10,
                       target_normalised: bool = True, source: str = "",
                       outputs: tuple[OutputSpec, ...] = ()) -> Bundle:
    """A servable bundle (unsaved; ``save_bundle(b, out, model_file=model_file)`` writes it) or BundleError.

    ``outputs``: what each of the model's K outputs forecasts (``--outputs``), each normalised with its own
    target's statistics; () : every output is the log return over ``horizon`` (today's single output)."""
    from operators.training import _table_hash, sequences_from_table  # noqa: PLC0415 - training imports bundle

    names = tuple(features)
    check_feature_names(names, "--features")
    if horizon < 1:
        raise BundleError(f"--horizon must be >= 1, got {horizon}")
    if not Path(model_file).is_file():
        raise BundleError(f"--keras {model_file}: no such file")
    stack = stack_of_keras_file(model_file, len(names))
    if outputs and len(outputs) != stack.outputs:
        raise BundleError(f"--outputs names {len(outputs)} outputs; the model gives {stack.outputs} per tick")
    horizon = outputs[0].horizon if outputs else horizon
    seq = sequences_from_table(ticks, names)
    if len(seq.order) < 2:
        raise InputDataError(f"only {len(seq.order)} valid ticks to fit the normalisation on; give more ticks")
    raw = seq.raw_features
    if outputs:
        target = targets(seq.price, seq.group_starts, outputs)
    else:
        target = log_return_target(seq.price, seq.group_starts, horizon)
    norm = Normalisation.fit(raw, target)
    if not target_normalised:
        zero = np.zeros(len(outputs)) if outputs else 0.0
        norm = Normalisation(norm.mean, norm.std, zero, zero + 1.0)
    training = {
        "source": source,
        "model_file": Path(model_file).name,
        "rows": int(ticks.num_rows),
        "valid_ticks": int(len(seq.order)),
        "instruments": len(seq.instruments),
        "first_ts": int(seq.ts.min()),
        "last_ts": int(seq.ts.max()),
        "sha256": _table_hash(ticks),
        "target_normalised": bool(target_normalised),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    draft = Bundle(None, "", FeatureSpec(names=names), norm, horizon, shape_of(stack), None, training, None, stack,
                   outputs)
    version = _version_hash(stack, draft.meta())
    return Bundle(None, version, draft.feature_spec, norm, horizon, draft.shape, None, training, None, stack, outputs)
