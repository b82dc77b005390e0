"""scorestream: real-time, explainable lead scoring on Kafka event streams."""

__version__ = "0.1.0"
