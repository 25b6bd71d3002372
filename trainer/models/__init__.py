"""The agent's networks (encoders, policies, critics, the exported graph), the latent world model and
checkpoint files. Imports torch and ``trainer.data`` types; never an algorithm."""
