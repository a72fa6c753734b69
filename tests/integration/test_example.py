"""examples/own_model/train_own_model.py end to end on tiny settings, so the worked example cannot rot.

The script asserts its own claims (operator forecasts equal Keras's, live forecasts equal the
backtest's); this test runs it and checks what it leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.live import ENV

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "own_model" / "train_own_model.py"
TINY = {"OWN_MODEL_TICKS": "12000", "OWN_MODEL_INSTRUMENTS": "4", "OWN_MODEL_EPOCHS": "1", "OWN_MODEL_HIDDEN": "4"}


def test_own_model_example_trains_bundles_backtests_and_runs_live(tmp_path):
    env = {**ENV, **TINY, "OWN_MODEL_WORKDIR": str(tmp_path / "work")}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp_path / "work"
    meta = json.loads((work / "bundle" / "bundle.json").read_text())
    assert [o["name"] for o in meta["target"]["outputs"]] == ["h1", "h10"]
    summary = json.loads((work / "backtest" / "summary.json").read_text())
    assert [o["name"] for o in summary["outputs"]] == ["h1", "h10"] and summary["outputs"][0]["scored"] > 0
    assert "largest difference operator vs Keras" in proc.stdout
    live = [ln for ln in proc.stdout.splitlines() if ln.startswith("live: ")]
    assert live and "4 of 4 instruments' forecasts equal the backtest's" in live[0], proc.stdout[-2000:]
