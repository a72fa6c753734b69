"""Candidate models: bundles stepped beside the primary over the same ticks, each with its own state.

:func:`load_candidates` is where every command that runs candidates (``run``; ``backtest --candidate``)
loads their bundles: each is checked as the primary's is, and a candidate whose model version is the
primary's or another candidate's is refused in one line (the same model twice would hold two copies of one
state, and its forecasts could not be told apart by version). The flag is :func:`pipeline.flags.add_candidate_arg`,
the config key ``candidates`` (:class:`pipeline.config.Candidate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from operators.errors import BundleError
from pipeline.config import ConfigError

if TYPE_CHECKING:
    from operators.bundle import Bundle


def load_candidates(primary: Bundle, directories: Sequence[str]) -> tuple[Bundle, ...]:
    """The bundles in ``directories``, in order; BundleError or ConfigError in one line saying which one and why."""
    from operators.bundle import load_bundle  # noqa: PLC0415

    seen = {primary.model_version: "the primary model"}
    out = []
    for i, directory in enumerate(directories, start=1):
        try:
            bundle = load_bundle(directory)
        except BundleError as exc:
            raise BundleError(f"candidate {i}: {exc}") from None
        if bundle.model_version in seen:
            raise ConfigError(f"candidate {i} ({directory}) is model version {bundle.model_version}, the same as "
                              f"{seen[bundle.model_version]}; each model runs once: remove the copy (to make a "
                              f"candidate the primary, give its directory as model and drop it from candidates)")
        seen[bundle.model_version] = f"candidate {i}"
        out.append(bundle)
    return tuple(out)


def describe_models(model: str, directories: Sequence[str]) -> tuple[list[str], str | None]:
    """For ``tickcast config check``: a line per model (its directory, and its version where its bundle loads on
    this machine; a bundle elsewhere is not a problem here) and the one-line reason the run would refuse to
    start with them (a model version twice), or None."""
    from operators.bundle import load_bundle  # noqa: PLC0415

    lines, loaded = [], []
    for what, directory in [("model", model), *((f"candidate {i}", d) for i, d in enumerate(directories, 1))]:
        try:
            bundle = load_bundle(directory)
        except BundleError as exc:
            lines.append(f"{what}: {directory} (not loaded here: {exc})")
            continue
        lines.append(f"{what}: {directory} (model version {bundle.model_version})")
        loaded.append((what, bundle))
    seen: dict[str, str] = {}
    for what, bundle in loaded:
        if bundle.model_version in seen:
            return lines, (f"{what} is model version {bundle.model_version}, the same as {seen[bundle.model_version]}; "
                           f"each model runs once")
        seen[bundle.model_version] = what
    return lines, None
