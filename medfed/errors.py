"""The errors medfed reports to a user: each names the file or setting at fault.

The command line turns any `MedfedError` into one message and exit code 2, with no
traceback; everything else is a bug and keeps its traceback.
"""


class MedfedError(Exception):
    """A problem with the user's input that medfed can explain."""


class ConfigError(MedfedError):
    """A setting is unknown, of the wrong type or out of range."""


class DataError(MedfedError):
    """A dataset file is missing, unreadable or not of the expected shape."""


class CheckpointError(MedfedError):
    """A checkpoint cannot be read or does not belong to this run."""
