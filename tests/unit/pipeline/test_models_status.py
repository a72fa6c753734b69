"""The model comparison's Prometheus series and `tickcast models status` reading them over HTTP."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.evaluation.compare import compare_forecasts
from pipeline.metrics import Metrics, MetricsServer
from pipeline.models_status import parse_status
from prometheus_client import generate_latest


def _snapshot(started=None, versions=("prim", "cand"), improve=0.5):
    rng = np.random.default_rng(4)
    r = rng.normal(0, 1, 3000)
    f = np.column_stack([r + rng.normal(0, 1, 3000), r + rng.normal(0, improve, 3000)])
    return compare_forecasts(r, f, list(versions), started=started or {v: 1000.0 for v in versions},
                             scored_total=[3000, 2990])


@pytest.fixture
def endpoint():
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1:0").start()
    try:
        yield metrics, f"http://{server.address}/metrics"
    finally:
        server.stop()


def _value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def test_a_snapshot_becomes_series_labelled_by_model_version():
    m = Metrics()
    snap = _snapshot()
    m.publish_comparison(snap)
    prim, cand = snap.models
    assert _value(m, "tickcast_model_score", model_version="prim", role="primary", metric="mae") == prim.mae
    assert _value(m, "tickcast_model_score", model_version="cand", role="candidate",
                  metric="r2_vs_random_walk") == cand.r2_vs_random_walk
    iv = snap.differences[1].interval
    assert snap.differences[1].loss == "squared"
    assert [_value(m, "tickcast_model_paired_difference", candidate="cand", primary="prim", loss="squared",
                   bound=b) for b in ("low", "mid", "high")] == [iv.low, iv.mid, iv.high]
    assert _value(m, "tickcast_model_started_timestamp_seconds", model_version="cand", role="candidate") == 1000.0
    assert _value(m, "tickcast_model_forecasts_scored_total", model_version="cand", role="candidate") == 2990
    assert _value(m, "tickcast_model_paired_forecasts") == 3000


def test_series_follow_the_snapshot_a_promotion_or_a_missing_score_removes_them():
    m = Metrics()
    m.publish_comparison(_snapshot())
    m.publish_comparison(_snapshot())  # the same totals again: the counter does not double
    assert _value(m, "tickcast_model_forecasts_scored_total", model_version="prim", role="primary") == 3000
    promoted = compare_forecasts(np.zeros(0), np.zeros((0, 2)), ["cand", "prim"])  # nothing scored yet
    m.publish_comparison(promoted)
    text = generate_latest(m.registry).decode()
    assert 'tickcast_model_score{' not in text and "tickcast_model_paired_difference{" not in text
    values = [s.value for fam in m.registry.collect() if fam.name.startswith("tickcast_model_") for s in fam.samples]
    assert values and all(np.isfinite(values)), "no NaN series for scores that do not exist"
    assert _value(m, "tickcast_model_started_timestamp_seconds", model_version="prim", role="primary") is None


def test_models_status_prints_the_table_from_a_real_endpoint(endpoint, capsys):
    metrics, url = endpoint
    metrics.publish_comparison(_snapshot(started={"prim": 0.0, "cand": 0.0}))
    assert main(["models", "status", "--metrics-url", url]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    prim = next(line for line in lines if line.startswith("prim "))
    cand = next(line for line in lines if line.startswith("cand "))
    assert "primary" in prim and "3,000" in prim and "candidate" in cand and "2,990" in cand
    assert "d" in prim.split()[2], "started at the epoch: days of running"
    squared = next(line for line in lines if line.startswith("cand") and "squared" in line)
    assert squared.endswith("yes"), "a candidate with half the noise is significantly better"
    assert "over 3,000 paired forecasts" in out


def test_a_candidate_no_better_is_not_called_significantly_better(endpoint, capsys):
    metrics, url = endpoint
    metrics.publish_comparison(_snapshot(improve=1.0))
    status = parse_status(generate_latest(metrics.registry).decode())
    assert [m.model_version for m in status.models] == ["prim", "cand"]
    assert main(["models", "status", "--metrics-url", url]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cand ") and "lute" in line]
    assert len(rows) == 1 and rows[0].endswith(" no"), rows


def test_an_endpoint_without_model_series_is_one_error_line_and_exit_2(endpoint, capsys):
    _, url = endpoint
    assert main(["models", "status", "--metrics-url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "serves no model comparison" in err


def test_an_unreachable_endpoint_is_one_error_line_and_exit_2(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connection is refused
        assert main(["models", "status", "--metrics-url", f"http://127.0.0.1:{port}/metrics"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the metrics endpoint" in err


def test_the_default_url_is_the_configured_metrics_port_on_localhost(endpoint, capsys, monkeypatch):
    metrics, url = endpoint
    metrics.publish_comparison(_snapshot())
    port = url.split(":")[2].split("/")[0]
    monkeypatch.setenv("TICKCAST_METRICS_ADDRESS", f"0.0.0.0:{port}")
    assert main(["models", "status"]) == 0
    assert "prim " in capsys.readouterr().out


def test_every_metric_the_dashboard_queries_is_defined_in_pipeline_metrics():
    import json
    import re
    from pathlib import Path

    from tests.support.metric_names import exported_names

    dashboard = json.loads((Path(__file__).parents[3] / "deploy" / "grafana" / "tickcast.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    named = {n for e in exprs for n in re.findall(r"\btickcast_[a-z0-9_]+", e)}
    m = Metrics()
    m.publish_comparison(_snapshot())
    exported = exported_names(generate_latest(m.registry).decode())
    assert not sorted(named - exported), "queried but not defined"
    comparison = [p for p in dashboard["panels"] if p["title"].startswith("Model comparison")]
    queried = {n for p in comparison for t in p["targets"] for n in re.findall(r"\btickcast_[a-z0-9_]+", t["expr"])}
    assert {"tickcast_model_score", "tickcast_model_paired_difference", "tickcast_model_forecasts_scored_total",
            "tickcast_model_started_timestamp_seconds"} <= queried
    # Each model's series has samples once a snapshot is published (not only a declaration).
    samples = {line.split("{")[0].split(" ")[0] for line in generate_latest(m.registry).decode().splitlines()
               if line.startswith("tickcast_model_")}
    assert queried <= samples
