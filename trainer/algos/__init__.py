"""The learning algorithms, each readable top to bottom with its equations in its docstring and in
docs/method.md. They import models, losses, data types and small utilities only: no files, run
directories, sockets or export (those are ``trainer.runs`` and ``trainer.daemon``).

- ``losses``: the pure loss and target functions shared by the learners.
- ``offline``: FOSP-lite pretraining (world model, in-sample critics, reachability, weighted BC).
- ``online``: SAC-Lag for π_on with policy expansion, Value Pre-Alignment, the PID λ.
- ``shield``: the shield threshold's calibration and its online intervention budget.
"""
