"""Sweeps and studies: the Optuna sweeper's logic (``sweeper``), where a study is stored (``storage``), pruning a
trial from inside its run (``pruning``), a multirun's summary of its jobs and their groups of repeats (``summary``,
``groups``) and the study's report (``report``, also ``python -m visiontrain.sweeps.report``).

``hydra_plugins/visiontrain_optuna`` is only the entry Hydra discovers. May import runs and errors; only cli and
the Hydra entry import sweeps.
"""
