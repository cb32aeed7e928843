"""Datamodules, one per data source. They never import tasks."""
