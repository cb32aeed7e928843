"""Datamodules, one per data source, on a base per family; what others may read of the data (``spec``,
``preprocessing``), splits, samplers, manifests and label statistics.

May import kinds, artifact and errors; never models, tasks or anything above.
"""
