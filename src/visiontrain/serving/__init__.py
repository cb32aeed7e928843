"""Trained models put to use: the serving interface (``base``), one module per task kind (how its network runs,
is exported and checked, and writes predictions), and loading a checkpoint or exported file (``inference``).

May import tasks, models, data, kinds, artifact and errors; tasks never import serving.
"""
