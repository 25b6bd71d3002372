"""The workstation side: offline pretraining, online fine-tuning, the trainer daemon, export.

Sub-packages by role (docs/architecture.md, "Folder map"); an arrow means "may import":

- ``data``: datasets, online replay, the offline/online mixer, augmentation. Imports nothing of the trainer.
- ``models``: networks, the world model, checkpoints. Imports ``data`` types only.
- ``algos``: losses and the learners (FOSP offline, SAC-Lag online, VPA, λ, shield calibration).
  Imports ``models``, ``data`` and ``protocol`` constants; never files, run directories, sockets or export.
- ``export``: the agent graph to ONNX and int8, signed bundles.
- ``runs``: the offline and online runs and their start-up, evaluation, run directories.
- ``daemon``: ``reachsafe daemon serve``: ingest, store, learner thread, bundles, status.

``cli`` holds the trainer's verbs as thin adapters over typed functions of ``runs``, ``daemon`` and
``export``.
"""
