"""The four commands (train, eval, predict, export): each composes its config, runs, and reports in one sentence."""
