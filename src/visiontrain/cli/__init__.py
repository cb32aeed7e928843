"""The commands (train, eval, predict, export): each rewrites its command line in one place, composes its config,
runs, and reports a mistake in one sentence.

May import everything below; nothing imports cli.
"""
