"""Offline pretraining (FOSP-lite): ``config`` (OfflineConfig) and ``learner`` (OfflineLearner)."""
