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


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A GRU + LayerNorm + Dense(1) model saved by Keras, its ticks file, and the bundle `tickcast bundle` made."""
    keras_model = build("lstm_layernorm_gru_k3")  # K = 3 outputs
    one_output = build("gru")
    folder = tmp_path_factory.mktemp("bring")
    pq.write_table(fit_ticks(), folder / "ticks.parquet")
    out = {}
    no_tf = env_without_tensorflow(folder / "no_tf")
    for name, model in (("k3", keras_model), ("k1", one_output)):
        model.save(folder / f"{name}.keras")
        # As the serving install runs it: TensorFlow and Keras cannot be imported.
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "bundle", "--keras", str(folder / f"{name}.keras"),
                               "--features", ",".join(FEATURES), "--fit-normalisation-on",
                               str(folder / "ticks.parquet"), "--out", str(folder / name), "--horizon", "7"],
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
    probe = ("import sys, json\nimport pyarrow.parquet as pq\nimport pipeline.cli, pipeline.serve\n"
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


def test_several_outputs_per_tick_are_refused_by_backtest_in_one_line(made, tmp_path):
    folder, out, _ = made
    done = tickcast("backtest", "--model", str(out["k3"][0]), "--input", str(folder / "ticks.parquet"),
                    "--out", str(tmp_path / "bt"), "--quiet", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "3 outputs per tick" in done.stderr


@pytest.mark.parametrize("change, message", [
    ({"--keras": "missing.keras"}, "--keras missing.keras: no such file"),
    ({"--features": "log_return,vwap,log_size,relative_spread"}, "unknown ['vwap']"),
    ({"--features": "log_return,log_size"}, "takes 4 features per tick, but 2 are named"),
    ({"--horizon": "0"}, "--horizon must be >= 1"),
    ({"--fit-normalisation-on": "nowhere.parquet"}, "nowhere.parquet"),
])
def test_bad_flags_are_one_line_saying_what_is_wrong(made, tmp_path, change, message):
    folder, _, _ = made
    flags = {"--keras": str(folder / "k1.keras"), "--features": ",".join(FEATURES),
             "--fit-normalisation-on": str(folder / "ticks.parquet"), "--out": str(tmp_path / "b"), **change}
    done = tickcast("bundle", *[a for kv in flags.items() for a in kv], check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr


def test_several_outputs_per_tick_are_refused_by_run_in_one_line_before_it_connects(made):
    _, out, _ = made
    done = tickcast("run", "--model", str(out["k3"][0]), "--bootstrap-servers", "127.0.0.1:1", check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "tickcast run: the model gives 3 outputs per tick" in done.stderr
