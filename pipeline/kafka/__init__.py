"""Kafka I/O outside the live loop: the client factory, topic range reads, file -> topic replay,
the embedded broker. Knows nothing of the live runtime (``pipeline.live``), backtests or reports.
"""
