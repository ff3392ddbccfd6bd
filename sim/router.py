"""A BACnet/IP router with controllers behind it, as on a site whose VAV boxes sit on MS/TP trunks.

The router is one bacpypes3 Application with two network ports: BACnet/IP on a loopback address
(network ``IP_NETWORK``) and a virtual LAN (network ``ROUTED_NETWORK``) standing in for the MS/TP
trunk, on which it has MAC 0. bacpypes3's network layer does the routing: it answers
Who-Is-Router-To-Network with I-Am-Router-To-Network, forwards global and remote broadcasts onto the
trunk, and forwards every NPDU for ``2:<mac>`` (and the answers back) with SNET/SADR filled in.

The controllers behind it are ordinary `SimDevice`s of the building (their zones have physics like
every other), each at MAC 1..N on the virtual LAN, so a client sees them at ``2:1``, ``2:2``, ... .
Like real MS/TP devices they take 480-byte APDUs and do not segment.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from bacpypes3.app import Application
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.vlan import VirtualNetwork

from sim.devices import VENDOR_ID, VENDOR_NAME, SimDevice
from sim.objects import SimApplication
from sim.physics import Building

IP_NETWORK = 1
ROUTED_NETWORK = 2
ROUTER_MAC = 0
MAX_ROUTED = 127  # MS/TP master MAC addresses are 0..127; the router has 0
ROUTER_INSTANCE = 4_000_001
_lan_ids = itertools.count(1)


def virtual_port(mac: int, network: int, lan_name: str, instance: int = 1) -> NetworkPortObject:
    """A network port on the virtual LAN: the stand-in for an MS/TP port."""
    return NetworkPortObject(
        objectIdentifier=("network-port", instance),
        objectName=f"NetworkPort-{instance}",
        networkType="virtual",
        protocolLevel="bacnet-application",
        macAddress=bytes([mac]),
        networkNumber=network,
        networkNumberQuality="configured",
        networkInterfaceName=lan_name,
        statusFlags=[0, 0, 0, 0],
        reliability="no-fault-detected",
        outOfService=False,
        changesPending=False,
    )


def _detach(app: Application) -> None:
    """Take an app's virtual-LAN nodes off their LAN: closing a VirtualLinkLayer does nothing, and a
    closed device must answer nothing."""
    for link_layer in app.link_layers.values():
        node = getattr(link_layer, "node", None)
        if node is not None and node.lan is not None:
            node.lan.remove_node(node)


class RoutedApplication(SimApplication):
    """A controller on the virtual LAN; close() unplugs it from the trunk."""

    def close(self) -> None:
        _detach(self)
        super().close()


class SimRouter:
    """The router and the `SimDevice`s behind it (zones ``first_index`` .. of the building)."""

    def __init__(
        self,
        building: Building,
        address: str,
        port: int,
        first_index: int,
        count: int,
        points: int,
        on_write: Callable[[], None],
        ip_network: int = IP_NETWORK,
        network: int = ROUTED_NETWORK,
    ) -> None:
        if not 1 <= count <= MAX_ROUTED:
            raise ValueError(f"routed devices must be 1..{MAX_ROUTED}, not {count}")
        if ip_network == network or not (1 <= ip_network <= 65534 and 1 <= network <= 65534):
            raise ValueError("router network numbers must differ and be 1..65534")
        self.address = address
        self.port = port
        self.ip_network = ip_network
        self.network = network
        self.devices = [
            SimDevice(first_index + k, building, address, port, points, on_write) for k in range(count)
        ]
        for dev in self.devices:
            dev.legacy = True  # an MS/TP controller: 480-byte APDUs, no segmentation
        self.app: Application | None = None
        self._lan_name: str | None = None

    def remote_address(self, mac: int) -> str:
        return f"{self.network}:{mac}"

    async def start(self) -> None:
        """Plug the router and every controller into a fresh virtual LAN, then bind the router's UDP
        socket (returns once it is bound)."""
        name = f"bacpipes-sim-net{self.network}-{next(_lan_ids)}"
        VirtualNetwork(name)  # registers itself under its name, which the ports refer to
        self._lan_name = name
        device = DeviceObject(
            objectIdentifier=("device", ROUTER_INSTANCE),
            objectName="VB-ROUTER",
            description=f"BACnet/IP to MS/TP router (network {self.ip_network} to {self.network})",
            vendorName=VENDOR_NAME,
            vendorIdentifier=VENDOR_ID,
            modelName="VB-RTR-IP-MSTP",
        )
        ip_port = NetworkPortObject(
            f"{self.address}/8:{self.port}",
            objectIdentifier=("network-port", 1),
            objectName="NetworkPort-1",
            networkNumber=self.ip_network,
            networkNumberQuality="configured",
        )
        trunk = virtual_port(ROUTER_MAC, self.network, name, instance=2)
        # the IP port comes first, so it is the router's "local" network (where its device object lives)
        self.app = Application.from_object_list([device, ip_port, trunk])
        for mac, dev in enumerate(self.devices, start=1):
            dev.address = self.address  # build() makes an IPv4 port from it, replaced just below
            objects = dev.build()
            objects[1] = virtual_port(mac, self.network, name)
            dev.address = self.remote_address(mac)
            dev.app = RoutedApplication.from_object_list(objects)
        for link_layer in self.app.link_layers.values():
            server: Any = getattr(link_layer, "server", None)
            if server is not None:  # the UDP side; the virtual LAN needs no binding
                await asyncio.gather(*server._transport_tasks)
                await server._local_transport_ready.wait()

    def stop(self) -> None:
        for dev in self.devices:
            if dev.app is not None:
                dev.app.close()
                dev.app = None
        if self.app is not None:
            _detach(self.app)
            self.app.close()
            self.app = None
        if self._lan_name is not None:
            VirtualNetwork._networks.pop(self._lan_name, None)
            self._lan_name = None
