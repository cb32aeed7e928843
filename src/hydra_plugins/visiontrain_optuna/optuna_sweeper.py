"""Where Hydra finds visiontrain's sweeper (``hydra/sweeper=visiontrain_optuna``). Hydra takes a plugin only from a
class defined under ``hydra_plugins``: this one is that class, and its logic is :mod:`visiontrain.sweeps.sweeper`'s."""

from visiontrain.sweeps import sweeper


class OptunaSweeper(sweeper.StudySweeper):
    """An Optuna study, one Hydra job per trial (see :mod:`visiontrain.sweeps.sweeper`)."""
