"""LightningModules, one per task kind (``base``: what they share), their metrics and test-time augmentation. A task
receives its network and data through the config.

May import plots, models, data, kinds, artifact, compat and errors; never serving, runs, sweeps or cli.
"""
