"""BacPipes: BACnet building data to MQTT, PostgreSQL and models."""

__version__ = "0.1.0"
