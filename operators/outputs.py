"""A model's outputs per tick: what each one forecasts, its target, and the losses that score it.

Every output forecasts the log return of the instrument's price over its own
``horizon`` ticks (:func:`operators.features.log_return_target`): ``kind="mean"``
its expectation (trained with the squared error), ``kind="quantile"`` its
``quantile``-th quantile (trained with the pinball loss). A model with one mean
output is the single-horizon model every bundle had before; its metadata stays
as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.features import log_return_target

KINDS = ("mean", "quantile")


@dataclass(frozen=True)
class OutputSpec:
    """One forecast per tick: its name (the key in messages and the column suffix in files) and meaning."""

    name: str
    horizon: int  # ticks of the same instrument
    kind: str = "mean"
    quantile: float | None = None  # in (0, 1) for kind "quantile"

    def check(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_.-" for c in self.name):
            raise ValueError(f"output name {self.name!r} must be letters, digits, '_', '.' or '-'")
        if self.horizon < 1:
            raise ValueError(f"output {self.name}: horizon must be >= 1, got {self.horizon}")
        if self.kind not in KINDS:
            raise ValueError(f"output {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "quantile") != (self.quantile is not None):
            raise ValueError(f"output {self.name}: a quantile is given for, and only for, kind 'quantile'")
        if self.quantile is not None and not 0 < self.quantile < 1:
            raise ValueError(f"output {self.name}: quantile must be in (0, 1), got {self.quantile}")

    def to_dict(self) -> dict:
        d = {"name": self.name, "horizon": self.horizon, "kind": self.kind}
        return d | ({"quantile": self.quantile} if self.quantile is not None else {})

    @classmethod
    def from_dict(cls, d: dict) -> OutputSpec:
        q = d.get("quantile")
        return cls(str(d["name"]), int(d["horizon"]), str(d.get("kind", "mean")), None if q is None else float(q))


def check_outputs(outputs: tuple[OutputSpec, ...]) -> None:
    if not outputs:
        raise ValueError("a model needs at least one output")
    for o in outputs:
        o.check()
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"output names must differ, got {names}")


def _numbers(text: str, what: str, kind=int) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def outputs_for(horizons: str | list[int], quantiles: str | list[float] = "") -> tuple[OutputSpec, ...]:
    """``--horizons 1,10 --quantiles 0.1,0.9``: per horizon a mean output ``h1``, then one output per
    quantile (``h1_q0.1``, ``h1_q0.9``)."""
    hs = _numbers(horizons, "--horizons") if isinstance(horizons, str) else list(horizons)
    qs = _numbers(quantiles, "--quantiles", float) if isinstance(quantiles, str) else list(quantiles)
    if not hs:
        raise ValueError("--horizons names no horizon")
    out = tuple(o for h in hs for o in (OutputSpec(f"h{h}", h),
                                        *(OutputSpec(f"h{h}_q{q:g}", h, "quantile", q) for q in qs)))
    check_outputs(out)
    return out


def parse_outputs(text: str) -> tuple[OutputSpec, ...]:
    """``--outputs h1:1,h10:10,h10_q0.9:10:0.9``: name:horizon for a mean, name:horizon:quantile for a quantile."""
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        parts = item.split(":")
        try:
            if len(parts) == 2:
                out.append(OutputSpec(parts[0], int(parts[1])))
            elif len(parts) == 3:
                out.append(OutputSpec(parts[0], int(parts[1]), "quantile", float(parts[2])))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--outputs {item!r}: give name:horizon or name:horizon:quantile") from None
    out_t = tuple(out)
    check_outputs(out_t)
    return out_t


def targets(price: np.ndarray, group_starts: np.ndarray, outputs: tuple[OutputSpec, ...]) -> np.ndarray:
    """(n, K) each output's target: the log return over its horizon; NaN past a group's end."""
    return np.column_stack([log_return_target(price, group_starts, o.horizon) for o in outputs])


def pinball(forecast: np.ndarray, realized: np.ndarray, q: float) -> np.ndarray:
    """Pinball (quantile) loss per tick: q * (r - f) if r >= f else (1 - q) * (f - r)."""
    d = realized - forecast
    return np.maximum(q * d, (q - 1) * d)
