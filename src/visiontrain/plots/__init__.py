"""Every figure visiontrain draws: training and evaluation figures (``figures``), the data figures of
``debug=browse`` (``data``), detections drawn over images and the class colours every drawing of masks shares.

Imports nothing of visiontrain beyond itself; tasks, runs and callbacks import plots.
"""
