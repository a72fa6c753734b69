"""How good the forecasts are: backtests, walk-forward, scores and plots, the online scorer, report.html.
Takes ticks as tables; knows no Kafka client internals and nothing of the live runtime.
"""
