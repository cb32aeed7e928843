"""Run mechanics around the Trainer: config and run folders, the command line as Hydra reads it, resume, DDP,
locks, checkpoint files, console, records, loggers and ``debug=browse``.

May import tasks, plots, data, models, kinds, artifact, compat and errors; never serving, sweeps, callbacks or cli.
"""
