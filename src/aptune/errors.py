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


class StoppedTogether(AptuneError):
    """Raised on every rank of a distributed run when any rank failed at a consensus point.

    All ranks stop at the same place; only ``report`` ranks (the first that failed)
    print the message, so a run shows one line however many processes it has.
    """

    def __init__(self, message: str, report: bool = True, agreed: bool = True) -> None:
        super().__init__(message)
        self.report = report
        self.agreed = agreed  # every rank raised it at the same point (no collective is pending)
