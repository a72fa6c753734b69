"""`tickcast backtest --engine`: the engine that steps the model is printed in one line; a refusal is one line."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from pipeline.files.synthetic import generate_ticks
from tests.support.keras_models import build, bundled


@pytest.fixture(scope="module")
def keras_only(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bn")
    bundle, _ = bundled(build("rnn_batchnorm", seed=2), folder)
    ticks = folder / "ticks.parquet"
    import pyarrow.parquet as pq

    pq.write_table(generate_ticks(3, 40, seed=3, bad_fraction=0.0), ticks)
    return bundle.path, ticks


def _backtest(capsys, bundle, ticks, out, *extra) -> tuple[int, str]:
    code = main(["backtest", "--input", str(ticks), "--model", str(bundle), "--out", str(out), "--no-plots",
                 *extra])
    return code, capsys.readouterr().err


def test_auto_prints_that_it_picked_keras_and_why(keras_only, tmp_path, capsys):
    code, err = _backtest(capsys, *keras_only, tmp_path / "auto")
    assert code == 0
    assert "engine: keras (auto: the NumPy kernel cannot; layer bn (BatchNormalization)" in err
    assert '"engine": "keras"' in (tmp_path / "auto" / "summary.json").read_text()


def test_engine_kernel_with_a_layer_it_lacks_fails_in_one_line(keras_only, tmp_path, capsys):
    code, err = _backtest(capsys, *keras_only, tmp_path / "kernel", "--engine", "kernel", "--quiet")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('tickcast: error: engine = "kernel" cannot serve this model: '
                                                    "layer bn (BatchNormalization)")
