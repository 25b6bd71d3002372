"""Hardware-in-the-loop acceptance suite, run on the robot (`reachsafe hil run`; docs/hil.md).

It drives the robot's real runtime (its CPU, clock and installed bundle) against a PyBullet bridge
(`reachsafe sim serve --faults`) and a trainer on the workstation, through scenarios that each
inject one fault and check pass criteria. Torch-free: it imports `protocol`, `hardware` and
`edge_runtime` only. Modules: `config` (the suite's typed config), `faults` (what the robot side
injects: the bridge's seeded faults by `hw_fault`, the e-stop, a trainer outage), `scenarios` (one
function per scenario and its criteria), `session` (one runtime run under a scenario), `report`
(JSON, terminal table, JUnit XML), `suite` (runs them in order), `cli` (the verb).
"""
