"""The robot runtime: control loop, inference, selection + shield, uplink, bundles (no torch here)."""
