"""Lightning callbacks of our own, one module per concept (everything else comes from lightning.pytorch.callbacks)."""
