"""Ticks and forecasts as files: vendor formats -> canonical ticks, synthetic ticks, micro-batch sources, the Parquet
sink (its schema: ``pipeline.wire.schemas``). Knows no Kafka client and nothing of the live runtime or of scoring.
"""
