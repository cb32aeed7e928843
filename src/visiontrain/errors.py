"""The one exception type for mistakes a user can fix (bad data, bad config).

Entry points turn it into a single-sentence message instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's files or configuration, explained in one sentence."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite: the run stops (in a sweep, the trial fails and the sweep goes on)."""
