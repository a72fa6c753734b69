"""``tickcast models status``: the model comparison as a table, read from a run's metrics endpoint.

Reads the ``tickcast_model_*`` series (``pipeline.metrics``, published from
``pipeline.evaluation.compare``) with prometheus-client's text parser: each
model, its role, how long it has run, its scores over the comparison window,
and each candidate's paired difference to the primary with its interval and
whether it is significantly better (the whole interval below zero).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from operators.errors import TickcastError
from pipeline.metrics import BOUNDS, SCORE_METRICS


class MetricsEndpointError(TickcastError):
    """The metrics endpoint cannot be read, or serves no model comparison."""


@dataclass
class ModelRow:
    model_version: str
    role: str
    started: float | None = None
    scored: int | None = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class DifferenceRow:
    candidate: str
    primary: str
    loss: str
    bounds: dict[str, float] = field(default_factory=dict)

    @property
    def significantly_better(self) -> bool | None:
        return self.bounds["high"] < 0 if "high" in self.bounds else None


@dataclass
class ModelsStatus:
    models: list[ModelRow]
    differences: list[DifferenceRow]
    paired: int | None


def metrics_url(address: str) -> str:
    """The /metrics URL of a ``metrics_address`` (host:port) on this machine."""
    _, _, port = address.rpartition(":")
    return f"http://localhost:{port}/metrics"


def fetch_metrics(url: str, timeout: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator-given URL
            return response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise MetricsEndpointError(f"cannot read the metrics endpoint {url}: {reason}") from None


def parse_status(text: str) -> ModelsStatus:
    """The model comparison in a /metrics text (empty lists when it has none)."""
    models: dict[tuple[str, str], ModelRow] = {}
    diffs: dict[tuple[str, str, str], DifferenceRow] = {}
    paired = None

    def model(labels) -> ModelRow:
        key = (labels["model_version"], labels["role"])
        return models.setdefault(key, ModelRow(*key))

    scored: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tickcast_model_score" and s.labels.get("metric") in SCORE_METRICS:
                model(s.labels).scores[s.labels["metric"]] = s.value
            elif s.name == "tickcast_model_started_timestamp_seconds":
                model(s.labels).started = s.value
            elif s.name == "tickcast_model_forecasts_scored_total":
                scored[(s.labels["model_version"], s.labels["role"])] = int(s.value)
            elif s.name == "tickcast_model_paired_difference" and s.labels.get("bound") in BOUNDS:
                key = (s.labels["candidate"], s.labels["primary"], s.labels["loss"])
                diffs.setdefault(key, DifferenceRow(*key)).bounds[s.labels["bound"]] = s.value
            elif s.name == "tickcast_model_paired_forecasts":
                paired = int(s.value)
    for key, n in scored.items():  # a model's counter outlives its scores (a promotion): only current models
        if key in models:
            models[key].scored = n
    order = {"primary": 0, "candidate": 1}
    rows = sorted(models.values(), key=lambda m: (order.get(m.role, 2), m.model_version))
    return ModelsStatus(rows, sorted(diffs.values(), key=lambda d: (d.candidate, d.loss)), paired)


def read_status(url: str) -> ModelsStatus:
    status = parse_status(fetch_metrics(url))
    if not status.models:
        raise MetricsEndpointError(f"{url} serves no model comparison (no tickcast_model_* series); is it a "
                                   "tickcast run whose forecasts have started to be scored?")
    return status


def _duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_status(status: ModelsStatus, now: float | None = None) -> str:
    now = time.time() if now is None else now

    def f(v, spec=".3e"):
        return "-" if v is None else format(v, spec)

    lines = [f"{'model':18}{'role':11}{'running':>9}{'scored':>12}{'MAE':>11}{'RMSE':>11}{'R^2 vs rw':>11}"
             f"{'hit rate':>10}"]
    for m in status.models:
        running = "-" if m.started is None else _duration(now - m.started)
        scored = "-" if m.scored is None else f"{m.scored:,}"
        lines.append(f"{m.model_version:18}{m.role:11}{running:>9}{scored:>12}{f(m.scores.get('mae')):>11}"
                     f"{f(m.scores.get('rmse')):>11}{f(m.scores.get('r2_vs_random_walk'), '+.4f'):>11}"
                     f"{f(m.scores.get('hit_rate'), '.3f'):>10}")
    if status.differences or any(m.role == "candidate" for m in status.models):
        over = f" over {status.paired:,} paired forecasts" if status.paired is not None else ""
        lines += ["", f"paired difference loss(candidate) - loss(primary){over} "
                  "(95% moving-block interval; below 0: candidate better)",
                  f"{'candidate':18}{'primary':18}{'loss':10}{'mean':>11}{'low':>11}{'high':>11}  significantly better"]
        for d in status.differences:
            better = {True: "yes", False: "no", None: "-"}[d.significantly_better]
            lines.append(f"{d.candidate:18}{d.primary:18}{d.loss:10}{f(d.bounds.get('mid'), '+.3e'):>11}"
                         f"{f(d.bounds.get('low'), '+.3e'):>11}{f(d.bounds.get('high'), '+.3e'):>11}  {better}")
        if not status.differences:
            lines.append("(no interval yet: fewer than two forecasts every model made have been scored)")
    return "\n".join(lines)
