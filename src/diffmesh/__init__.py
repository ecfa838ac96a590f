"""diffmesh: a ComfyUI-compatible Stable Diffusion node-graph engine and server for many devices.

Importing this package does nothing but define names: devices are probed, models loaded and
servers started only by the objects that `diffmesh.cli` builds.
"""

__version__ = "0.1.0"
