"""Online fine-tuning: ``config`` (OnlineConfig), ``learner`` (SAC-Lag with policy expansion),
``vpa`` (Value Pre-Alignment) and ``lagrange`` (the PID λ controller)."""
