"""LightningModules, one per task. A task receives its network and data through the config."""
