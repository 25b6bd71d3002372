"""Runs: the offline run (``offline``), the online run against a gymnasium env (``online``), the
start-up both online entry points share (``start``), one rollout step as the robot acts
(``rollout``), bundle evaluation (``evaluate``), re-evaluation of finished runs (``reeval``),
run directories and TensorBoard scalars. This is where files, seeds and signals are handled."""
