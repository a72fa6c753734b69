"""tickcast pipeline: sources, sinks, the run loop, reports and the CLI.

Treats the operator (``operators.forecaster.Forecaster``) as a black box:
ticks in, forecasts and rejections out.
"""
