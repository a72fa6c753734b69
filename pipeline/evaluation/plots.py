"""The backtest plots: cumulative error against the random walk, forecast vs realised, and with candidates the
cumulative paired loss difference candidate − primary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.evaluation.scores import spearman


@contextmanager
def plain_text_pyplot() -> Iterator:
    """pyplot on the Agg backend, drawing every string as it is: a ``$`` in an instrument name or a file name
    is text, never matplotlib mathtext (``X$^$``, a valid instrument name, made the whole report fail)."""
    import matplotlib  # noqa: PLC0415 - plotting only when asked

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        yield plt


def plot_backtest(forecasts: pa.Table, out_dir: Path, title: str) -> list[Path]:
    """Cumulative absolute error (model vs random walk) and a forecast/realised scatter."""
    with plain_text_pyplot() as plt:
        return _plot_backtest(forecasts, out_dir, title, plt)


def _plot_backtest(forecasts: pa.Table, out_dir: Path, title: str, plt) -> list[Path]:
    f = forecasts.column("forecast").to_numpy()
    r = forecasts.column("realized").to_numpy(zero_copy_only=False)
    ok = np.isfinite(r)
    f, r = f[ok], r[ok]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    short = "/".join(Path(title).parts[-2:]) if "/" in title else title
    for ax, (label, fn) in zip(axes, [("absolute", np.abs), ("squared", np.square)]):
        if len(f):
            step = max(1, len(f) // 4000)
            x = np.arange(len(f))
            ax.plot(x[::step], np.cumsum(fn(f - r))[::step], label="model")
            ax.plot(x[::step], np.cumsum(fn(r))[::step], label="random walk (zero return)")
        ax.set_xlabel("scored tick (input order)")
        ax.set_ylabel(f"cumulative {label} error")
        ax.set_title(f"cumulative {label} error (lower is better)")
        ax.legend()
    fig.suptitle(short)
    fig.tight_layout()
    paths.append(out_dir / "cumulative_error.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    if len(f):
        rng = np.random.default_rng(0)
        pick = rng.choice(len(f), size=min(len(f), 20000), replace=False)
        ax.scatter(f[pick], r[pick], s=2, alpha=0.3)
        lim = np.nanpercentile(np.abs(r), 99.5) or 1e-9
        ax.set_ylim(-lim, lim)
        flim = np.nanpercentile(np.abs(f), 99.5) or 1e-9
        ax.set_xlim(-flim, flim)
    ic = spearman(f, r)
    ax.set_title(f"forecast vs realised (IC {ic:.3f})" if ic is not None else "forecast vs realised")
    ax.set_xlabel("forecast log return")
    ax.set_ylabel("realised log return")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    fig.tight_layout()
    paths.append(out_dir / "forecast_vs_realized.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def plot_paired_differences(realised: np.ndarray, forecasts: np.ndarray, versions: list[str], path: Path) -> Path:
    """Per candidate (columns 1.. of ``forecasts``; column 0 the primary), the cumulative sum of
    loss(candidate) − loss(primary) over the ticks every model forecast, absolute and squared error: a line
    that falls, the candidate is ahead."""
    both = np.isfinite(realised) & np.isfinite(forecasts).all(axis=1)
    err = forecasts[both] - realised[both, None]
    with plain_text_pyplot() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, (label, fn) in zip(axes, [("absolute", np.abs), ("squared", np.square)]):
            step = max(1, len(err) // 4000)
            for j, version in enumerate(versions[1:], start=1):
                cum = np.cumsum(fn(err[:, j]) - fn(err[:, 0]))
                ax.plot(np.arange(len(cum))[::step], cum[::step], label=version)
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_xlabel("paired tick (input order)")
            ax.set_ylabel(f"cumulative {label} error, candidate - primary")
            ax.set_title(f"{label} error: falling = candidate better")
            ax.legend(title=f"primary {versions[0]}")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return path
