"""tickcast pipeline: the CLI and its commands, config, checkpoints, metrics and logs here; every message format
in ``wire/``, Kafka I/O in ``kafka/``, the live runtime in ``live/``, files in ``files/``, backtests, scores and
reports in ``evaluation/``.

Treats the operator (``operators.forecaster.Forecaster``) as a black box:
ticks in, forecasts and rejections out.
"""
