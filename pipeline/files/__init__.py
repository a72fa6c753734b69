"""Ticks and forecasts as files: vendor formats -> canonical ticks, synthetic ticks, micro-batch sources, Parquet
and Arrow sinks. Knows no Kafka client and nothing of the live runtime or of scoring.
"""
