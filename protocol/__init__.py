"""reachsafe wire protocol v1 (spec: docs/protocol.md).

Modules: `constants` (version, limits, step columns), `errors`, `messages` (one dataclass per
message type), `codec` (`encode` / `decode`), `sockets` (ZeroMQ sockets with MAXMSGSIZE and
CURVE), `bundle` (signed policy bundles), `keys` (key files), `cli` (`reachsafe keys`),
`config` (typed configs). Nothing here imports torch, trainer, sim_bridge or hardware.
"""
