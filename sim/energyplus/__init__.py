"""EnergyPlus reference buildings as the virtual site's engine (issue 16).

``EnergyPlusBuilding`` runs a DOE prototype (shipped with ``pyenergyplus-lbnl``) with a TMY3 weather
file, stepped by the caller one zone timestep at a time; ``describe`` names its BACnet points the way
``sim/devices.py`` names the RC model's. Nothing here opens a socket or a database: the BACnet server
and the backfill sit on top (see each module's docstring).
"""

from sim.energyplus.engine import EnergyPlusBuilding, Sample, package_data
from sim.energyplus.points import DeviceSpec, PointSpec, describe

__all__ = ["DeviceSpec", "EnergyPlusBuilding", "PointSpec", "Sample", "describe", "package_data"]
