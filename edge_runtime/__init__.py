"""The robot runtime: control loop, inference, selection + shield, uplink, bundles (no torch here)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reachsafe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
