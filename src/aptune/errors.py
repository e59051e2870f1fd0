"""Errors that reach the user as one clear line, never as a deep traceback."""


class AptuneError(Exception):
    """A problem with the user's input (file, key, value) explained in one line.

    The command line prints ``error: <message>`` and exits with status 2; library
    callers can catch it like any exception.
    """


class ConfigError(AptuneError):
    """A bad configuration key or value."""


class CheckpointError(AptuneError):
    """A file that is not a usable checkpoint or adapter."""


class DataError(AptuneError):
    """A bad annotation file, split or video dataset."""


class OutputError(AptuneError):
    """A file or folder that cannot be written (full disk, read-only, no permission, bad name)."""
