"""PyBullet stand-in for the robot: safe-navigation tasks, datasets and a hardware server."""

from reachsafe.sim_bridge.registration import register_envs

register_envs()

__all__ = ["register_envs"]
