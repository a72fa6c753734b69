"""The live runtime: Kafka in, the operator, forecasts out, offsets committed.

``runner.py`` holds the lifecycle and the loop; each concern the loop calls has one module here.
"""
