"""Run mechanics around the Trainer: config and run folders, resume, DDP, locks, checkpoint files, console, records."""
