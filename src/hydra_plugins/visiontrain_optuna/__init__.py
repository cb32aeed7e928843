"""visiontrain's Hydra sweeper on the current Optuna API: ``hydra/sweeper=visiontrain_optuna`` (conf/hparams_search/).

The published hydra-optuna-sweeper requires optuna<3; this one keeps its configuration and Hydra's sweep syntax.
"""
