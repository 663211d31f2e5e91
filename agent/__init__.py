"""District CCTV edge agent: capture, motion and object events, MQTT link to the city platform."""

__all__ = ["__version__"]

__version__ = "0.1.0"
