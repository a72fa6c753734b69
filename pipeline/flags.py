"""The flags ``tickcast train`` and ``tickcast walkforward`` share, and the training config they make."""

from __future__ import annotations

import argparse

from operators.features import FEATURE_NAMES, KNOWN_FEATURES
from pipeline.config import ConfigError


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=1, help="recurrent layers (default: 1)")
    p.add_argument("--hidden", type=int, default=32, help="units per recurrent layer (default: 32)")
    p.add_argument("--horizon", type=int, default=10, help="forecast horizon in ticks of the instrument (default: 10)")
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"], help="recurrent cell (default: lstm)")
    p.add_argument("--horizons", default="", metavar="H1,H2,...", help="several outputs: a forecast per horizon "
                   "(overrides --horizon), e.g. 1,10,100")
    p.add_argument("--quantiles", default="", metavar="Q1,Q2,...", help="per horizon also these quantiles "
                   "(pinball loss), e.g. 0.1,0.9")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    p.add_argument("--window", type=int, default=128, help="ticks per training sequence (default: 128)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per training step (default: 64)")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="Adam learning rate (default: 0.002)")
    p.add_argument("--max-ticks", type=int, default=400_000,
                   help="train on at most this many ticks, the first in the file (default: 400000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--features", default=",".join(FEATURE_NAMES), metavar="F1,F2,...",
                   help=f"the model's inputs in order, from: {', '.join(KNOWN_FEATURES)} (docs/features.md; "
                        f"default: {','.join(FEATURE_NAMES)})")


def train_config(args: argparse.Namespace):
    from operators.training import TrainConfig  # noqa: PLC0415

    try:
        cfg = TrainConfig.with_outputs(args.horizons, args.quantiles, layers=args.layers, hidden=args.hidden,
                                       horizon=args.horizon, epochs=args.epochs, window=args.window,
                                       batch_size=args.batch_size, learning_rate=args.learning_rate,
                                       max_ticks=args.max_ticks, seed=args.seed, cell=args.cell,
                                       features=tuple(n.strip() for n in args.features.split(",") if n.strip()))
        cfg.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg
