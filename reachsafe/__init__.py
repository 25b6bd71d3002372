"""reachsafe: safe offline-to-online fine-tuning of a vision policy on a real robot.

One import namespace over the repository's parts (docs/architecture.md, "Folder map"):
``reachsafe.protocol`` (wire, bundles, keys, configs), ``reachsafe.hardware`` (device drivers),
``reachsafe.edge_runtime`` (the robot), ``reachsafe.sim_bridge`` (PyBullet) and
``reachsafe.trainer`` (the workstation). This package itself holds only what spans the parts:
the ``reachsafe`` command (:mod:`reachsafe.cli`) and the localhost demo (:mod:`reachsafe.demo`).
Importing it loads nothing heavy: the robot imports it too.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reachsafe")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
