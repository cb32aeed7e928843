"""Every figure visiontrain draws: training and evaluation figures (``figures``), data figures for
``debug=browse`` (``data``), learning curves, detections drawn over images and the class colours masks share.

May import ``visiontrain.data`` and ``visiontrain.errors``; never tasks, runs or serving (they import plots).
"""
