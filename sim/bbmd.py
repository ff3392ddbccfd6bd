"""A BBMD on the virtual building's network, so an agent elsewhere can discover by broadcast.

On loopback the devices answer a Who-Is with a broadcast to port 47808; an agent on another port
(needed on loopback, see DESIGN.md) never hears it. A real site solves this the same way: the agent
registers as a foreign device with the BBMD, which forwards broadcasts both ways.
"""

from __future__ import annotations

from bacpypes3.app import Application
from bacpypes3.basetypes import IPMode
from bacpypes3.ipv4 import IPv4Address
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject

BBMD_INSTANCE = 4_000_000


def make_bbmd(address: str, port: int = 47808) -> Application:
    """A BBMD whose broadcast distribution table holds itself: forwarded broadcasts go local."""
    device = DeviceObject(
        objectIdentifier=("device", BBMD_INSTANCE), objectName="VB-BBMD", vendorIdentifier=999
    )
    local = f"{address}/8:{port}"
    network_port = NetworkPortObject(
        local,
        objectIdentifier=("network-port", 1),
        objectName="NetworkPort-1",
        bacnetIPMode=IPMode.bbmd,
        bbmdBroadcastDistributionTable=[],
        bbmdAcceptFDRegistrations=True,
    )
    app = Application.from_object_list([device, network_port])
    for link_layer in app.link_layers.values():
        link_layer.add_peer(IPv4Address(local))
    return app
