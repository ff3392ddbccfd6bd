"""The site agent: BACnet client, discovery, polling, MQTT publishing with a durable spool."""
