"""Network builders, one module per model family. They never import tasks."""
