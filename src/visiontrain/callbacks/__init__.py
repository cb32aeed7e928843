"""Lightning callbacks of our own, one module per concept (everything else comes from lightning.pytorch.callbacks):
what a checkpoint carries, EMA, staged fine-tuning, a NaN loss, signals, TensorBoard continuity, learning curves.

May import runs, tasks (for types), plots, data, artifact, compat and errors; only cli imports callbacks.
"""
