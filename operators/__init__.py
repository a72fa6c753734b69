"""tickcast operators: pure compute (state table, features, model, stepping).

Nothing here knows about Kafka, metrics or files other than model bundles.
"""
