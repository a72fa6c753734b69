"""The serving install (deploy/requirements-serve.lock: no TensorFlow, no Keras) as its users run it.

Each child process here imports through tests/support/no_tensorflow.py's finder, which answers `tensorflow`
and `keras` as an install without them does; the first test shows the finder holds, so the others mean
what they say: `tickcast run` serves, `tickcast backtest` gives the same numbers, `tickcast train` says in
one line what it needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import uuid

import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement

from operators.bundle import training_requirements
from operators.forecaster import Forecaster
from pipeline.files.sinks import write_parquet
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import create_topics
from tests.support.live import ENV, RunProcess, produce, tick_messages
from tests.support.no_tensorflow import ROOT, env_without_tensorflow
from tests.support.readers import read_all


@pytest.fixture
def no_tf(tmp_path):
    return env_without_tensorflow(tmp_path / "site")


def _tickcast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_the_children_cannot_import_tensorflow_or_keras(no_tf):
    probe = ("import importlib\n"
             "for name in ('tensorflow', 'keras', 'tensorflow.python', 'keras.saving'):\n"
             "    try:\n        importlib.import_module(name)\n"
             "    except ModuleNotFoundError as exc:\n        print(exc.name)\n"
             "    else:\n        raise SystemExit(name + ' was imported')\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=no_tf, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tensorflow", "keras", "tensorflow", "keras"]


def test_train_says_in_one_line_that_it_needs_tensorflow_and_how_to_install_it(no_tf, tmp_path):
    write_parquet(generate_ticks(5, 2_000, seed=4), tmp_path / "ticks.parquet")
    done = _tickcast(no_tf, "train", "--input", str(tmp_path / "ticks.parquet"), "--out", str(tmp_path / "m"),
                     "--epochs", "1")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if "error" in ln.lower()]
    assert errors == ["tickcast: error: training needs TensorFlow and Keras, which this install leaves out (the "
                      f"serving install); install them with: pip install {training_requirements()}"], done.stderr
    assert not (tmp_path / "m").exists()


def test_loading_a_bundle_through_keras_says_what_it_needs(no_tf, bundle):
    probe = ("from operators.bundle import load_bundle\nfrom operators.errors import TrainingUnavailable\n"
             f"try:\n    load_bundle({str(bundle.path)!r}, with_keras=True)\n"
             "except TrainingUnavailable as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=no_tf, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (f"loading {bundle.path / 'model.keras'} with Keras needs TensorFlow and Keras, "
                                   "which this install leaves out (the serving install); install them with: "
                                   f"pip install {training_requirements()}")


def test_the_install_hint_asks_for_what_pyproject_requires():
    deps = [Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    wanted = {str(Requirement(r.strip("'"))) for r in training_requirements().split()}
    required = {f"{r.name}{r.specifier}" for r in deps
                if r.name in ("tensorflow", "tensorflow-cpu", "keras") and (r.marker is None or r.marker.evaluate())}
    assert wanted == required


def test_run_help_and_backtest_work_without_tensorflow_and_forecast_the_same(no_tf, bundle, tmp_path):
    assert _tickcast(no_tf, "run", "--help").returncode == 0
    write_parquet(generate_ticks(8, 2_000, seed=5), tmp_path / "ticks.parquet")
    tables = {}
    for name, env in (("serving install", no_tf), ("full install", ENV)):
        out = tmp_path / name.replace(" ", "_")
        done = _tickcast(env, "backtest", "--input", str(tmp_path / "ticks.parquet"), "--model", str(bundle.path),
                         "--out", str(out), "--quiet")
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
        tables[name] = pq.read_table(out / "forecasts.parquet")
        assert (out / "plots" / "cumulative_error.png").is_file()
    assert tables["serving install"].num_rows > 1_900
    assert tables["serving install"].equals(tables["full install"])


def test_a_run_serves_the_same_forecasts_without_tensorflow(kafka_bootstrap, bundle, no_tf):
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq = (f"serve-install-{what}-{u}" for what in ("in", "out", "dlq"))
    create_topics(kafka_bootstrap, {tin: 1, tout: 1, dlq: 1})
    ticks = generate_ticks(6, 500, seed=6, bad_fraction=0.0)
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, f"serve-install-{u}", env=no_tf)
    try:
        produce(kafka_bootstrap, tin, tick_messages(ticks), partition=0)
        got = read_all(kafka_bootstrap, tout, 1, expected=ticks.num_rows)
    finally:
        assert run.stop() == 0, "".join(run.raw)[-3000:]
    assert not any("tensorflow" in line.lower() for line in run.raw)
    res = Forecaster(bundle).step(ticks)
    expected = dict(zip(res.rows.tolist(), res.forecasts.tolist()))
    served = {json.loads(m.value())["offset"]: json.loads(m.value())["forecast"] for m in got}
    assert served.keys() == expected.keys()
    scale = bundle.normalisation.target_std
    for row, value in served.items():
        assert value / scale == pytest.approx(expected[row] / scale, rel=1e-5, abs=1e-5), row
