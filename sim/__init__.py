"""The virtual building: RC thermal physics behind real BACnet/IP devices on loopback."""
