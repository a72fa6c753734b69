"""`tickcast bundle --keras` as a user runs it; bundling and serving need no TensorFlow; bad flags in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.bundle import load_bundle
from tests.support.bundles import in_target_units
from tests.support.cli import tickcast
from tests.support.keras_models import FEATURES, ChainReference, build, fit_ticks
from tests.support.no_tensorflow import env_without_tensorflow

ROOT = Path(__file__).parents[3]
K3_OUTPUTS = "near:1,far:7,far_q0.9:7:0.9"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A GRU + LayerNorm + Dense(1) model saved by Keras, its ticks file, and the bundle `tickcast bundle` made."""
    keras_model = build("lstm_layernorm_gru_k3")  # K = 3 outputs
    one_output = build("gru")
    folder = tmp_path_factory.mktemp("bring")
    pq.write_table(fit_ticks(), folder / "ticks.parquet")
    out = {}
    no_tf = env_without_tensorflow(folder / "no_tf")
    for name, model, extra in (("k3", keras_model, ["--outputs", K3_OUTPUTS]), ("k1", one_output, [])):
        model.save(folder / f"{name}.keras")
        # As the serving install runs it: TensorFlow and Keras cannot be imported.
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "bundle", "--keras", str(folder / f"{name}.keras"),
                               "--features", ",".join(FEATURES), "--fit-normalisation-on",
                               str(folder / "ticks.parquet"), "--out", str(folder / name), "--horizon", "7", *extra],
                              capture_output=True, text=True, timeout=300, env=no_tf, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith(f"bundled {folder / name}")
        out[name] = (folder / name, model)
    return folder, out, no_tf


def test_bundle_command_writes_a_bundle_that_loads_without_tensorflow_and_serves_as_keras(made):
    folder, out, no_tf = made
    path, model = out["k1"]
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["feature_spec"]["names"] == FEATURES and meta["target"]["horizon_ticks"] == 7
    assert meta["architecture"]["source"] == "keras" and meta["architecture"]["cells"] == [["gru", 4]]
    probe = ("import sys, json\nimport pyarrow.parquet as pq\nimport pipeline.cli, pipeline.run_command\n"
             "try:\n    import tensorflow\nexcept ModuleNotFoundError:\n    pass\nelse:\n    raise SystemExit('tf')\n"
             "from operators.bundle import load_bundle\nfrom operators.forecaster import Forecaster\n"
             f"r = Forecaster(load_bundle({str(path)!r})).step(pq.read_table({str(folder / 'ticks.parquet')!r}))\n"
             "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow'))\n"
             "assert not loaded, loaded[:5]\n"
             "print(json.dumps({'rows': r.rows.tolist(), 'forecasts': r.forecasts.tolist()}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=no_tf)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    bundle = load_bundle(path)
    rows, want, _ = ChainReference(bundle, model).run(fit_ticks())
    assert got["rows"] == rows.tolist()
    np.testing.assert_allclose(in_target_units(bundle, np.array(got["forecasts"])), want[:, 0], rtol=1e-5, atol=1e-5)


def test_a_brought_model_with_several_outputs_is_bundled_with_their_meanings_and_backtested_output_by_output(
        made, tmp_path):
    folder, out, _ = made
    path = out["k3"][0]
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["target"]["outputs"] == [{"name": "near", "horizon": 1, "kind": "mean"},
                                         {"name": "far", "horizon": 7, "kind": "mean"},
                                         {"name": "far_q0.9", "horizon": 7, "kind": "quantile", "quantile": 0.9}]
    # Each output's target statistics are its own horizon's: far and far_q0.9 share them, near differs.
    means, stds = meta["normalisation"]["target_mean"], meta["normalisation"]["target_std"]
    assert len(means) == len(stds) == 3 and stds[1] == stds[2] and stds[0] != stds[1]
    done = tickcast("backtest", "--model", str(path), "--input", str(folder / "ticks.parquet"),
                    "--out", str(tmp_path / "bt"), "--quiet", "--no-plots")
    summary = json.loads((tmp_path / "bt" / "summary.json").read_text())
    assert [(o["name"], o["horizon_ticks"], o["kind"]) for o in summary["outputs"]] == [
        ("near", 1, "mean"), ("far", 7, "mean"), ("far_q0.9", 7, "quantile")]
    columns = pq.read_table(tmp_path / "bt" / "forecasts.parquet").column_names
    assert {"forecast_near", "forecast_far", "forecast_far_q0.9", "realized_near", "realized_far_q0.9"} <= set(columns)
    assert "forecast" not in columns
    lines = done.stdout.splitlines()
    assert [ln.split()[0] for ln in lines if ln.strip().startswith(("near", "far"))] == ["near", "far", "far_q0.9"]


@pytest.mark.parametrize("change, message", [
    ({"--keras": "missing.keras"}, "--keras missing.keras: no such file"),
    ({"--features": "log_return,vwap,log_size,relative_spread"}, "unknown ['vwap']"),
    ({"--features": "log_return,log_size"}, "takes 4 features per tick, but 2 are named"),
    ({"--horizon": "0"}, "--horizon must be >= 1"),
    ({"--fit-normalisation-on": "nowhere.parquet"}, "nowhere.parquet"),
    ({"--outputs": "a:1,b:2"}, "--outputs names 2 outputs; the model gives 1 per tick"),
    ({"--outputs": "a:x"}, "--outputs 'a:x': give name:horizon or name:horizon:quantile"),
    ({"--outputs": "a:1:1.5"}, "output a: quantile must be in (0, 1), got 1.5"),
])
def test_bad_flags_are_one_line_saying_what_is_wrong(made, tmp_path, change, message):
    folder, _, _ = made
    flags = {"--keras": str(folder / "k1.keras"), "--features": ",".join(FEATURES),
             "--fit-normalisation-on": str(folder / "ticks.parquet"), "--out": str(tmp_path / "b"), **change}
    done = tickcast("bundle", *[a for kv in flags.items() for a in kv], check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr


def test_a_model_with_a_layer_the_kernel_lacks_is_bundled_without_tensorflow_and_says_which_engine(made):
    """Bundling reads the file as data for the Keras engine's chains too; the command says what will serve it."""
    folder, _, no_tf = made
    build("rnn_batchnorm").save(folder / "bn.keras")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "bundle", "--keras", str(folder / "bn.keras"),
                           "--features", ",".join(FEATURES), "--fit-normalisation-on", str(folder / "ticks.parquet"),
                           "--out", str(folder / "bn")], capture_output=True, text=True, timeout=300, env=no_tf,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "; served by engine: keras (auto: the NumPy kernel cannot; layer bn (BatchNormalization)" in done.stdout
    kinds = [layer["kind"] for layer in json.loads((folder / "bn" / "bundle.json").read_text())["architecture"]["stack"]]
    assert kinds == ["rnn", "keras", "dense"]


@pytest.mark.parametrize("target", ["secret", "fifo"])
def test_a_model_file_whose_weights_point_outside_it_is_refused_in_one_line_and_exit_2(made, tmp_path, target):
    """A Dense kernel stored "externally" in a host file (it would come back as the kernel) or in a FIFO (a
    reader would wait forever): `tickcast bundle` says so in one line and exits 2, without reading either."""
    import os

    import numpy as np

    from tests.support.keras_files import edit_weights, replace_dataset

    folder, _, no_tf = made
    outside = tmp_path / target
    if target == "fifo":
        os.mkfifo(outside)
    else:
        outside.write_bytes(np.full(1024, 4242.0, np.float32).tobytes())
    model = edit_weights(folder / "k1.keras", tmp_path / "m.keras",
                         lambda f: replace_dataset(f, "layers/dense/vars/0", external=[(str(outside), 0, 4096)]))
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "bundle", "--keras", str(model), "--features",
                               ",".join(FEATURES), "--fit-normalisation-on", str(folder / "ticks.parquet"), "--out",
                               str(tmp_path / "b")], capture_output=True, text=True, timeout=240, env=no_tf, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("tickcast bundle hung on a model file whose weights name a FIFO")
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tickcast: error: ") and "external file" in lines[0], lines
    assert not (tmp_path / "b" / "bundle.json").exists()
