"""``tickcast bundle --keras``: a bundle around a Keras model trained anywhere.

The work is :func:`operators.bundle_from_keras.bundle_keras_model` (read the file as data, refuse what the
NumPy kernel cannot compute exactly, fit the normalisation); this module turns flags into its arguments,
loads the ticks the normalisation is fitted on, writes the bundle and says what it holds.
"""

from __future__ import annotations

from pathlib import Path

from operators.bundle import Bundle, save_bundle
from pipeline.config import ConfigError
from pipeline.inputs import TickInput, load_ticks

TARGET_SCALES = ("fitted", "none")


def bundle_keras(model_file: str, features: str, ticks_from: TickInput, out: str, horizon: int = 10,
                 target_scale: str = "fitted", outputs: str = "") -> tuple[Bundle, Path]:
    """Bundle ``model_file`` (a .keras file) into ``out``; ConfigError/BundleError in one line when it cannot.
    ``outputs``: ``--outputs name:horizon[:quantile],...``, one per model output."""
    from operators.bundle_from_keras import bundle_keras_model  # noqa: PLC0415
    from operators.outputs import parse_outputs  # noqa: PLC0415

    names = [name.strip() for name in features.split(",") if name.strip()]
    try:
        specs = parse_outputs(outputs) if outputs else ()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if horizon < 1:
        raise ConfigError(f"--horizon must be >= 1, got {horizon}")
    if target_scale not in TARGET_SCALES:
        raise ConfigError(f"--target-scale must be one of {', '.join(TARGET_SCALES)}, got {target_scale!r}")
    if not Path(model_file).is_file():
        raise ConfigError(f"--keras {model_file}: no such file")
    if Path(out).exists() and any(Path(out).iterdir()) and not (Path(out) / "bundle.json").is_file():
        raise ConfigError(f"--out {out} exists and is not a model bundle; give a new or empty directory")
    ticks = load_ticks(ticks_from).ticks
    bundle = bundle_keras_model(model_file, names, ticks, horizon=horizon, target_normalised=target_scale == "fitted",
                                source=ticks_from.name(), outputs=specs)
    return bundle, save_bundle(bundle, out, model_file=model_file)


def describe_bundle(bundle: Bundle, path: Path) -> str:
    names = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}
    cells = " + ".join(f"{names[kind]}({units})" for kind, units in bundle.shape.cells)
    what = (f"horizon {bundle.horizon} ticks" if bundle.outputs == 1 and not bundle.output_specs else
            "outputs " + ", ".join(o.name for o in bundle.output_list))
    from operators.engines import choose  # noqa: PLC0415

    return (f"bundled {path}: model {bundle.model_version}, {cells}, {bundle.outputs} output(s) per tick, features "
            f"{', '.join(bundle.feature_spec.names)}, {what}, normalisation fitted on "
            f"{bundle.training.get('valid_ticks', 0):,} ticks; served by {choose(bundle.stack).line}")
