"""Every error a user can cause, in one place.

Each message is one line naming the field (or file) and the fix; the CLI prints it after
``vaesweep: error:`` and exits with status 2 (vaesweep/cli/main.py).
"""


class UsageError(Exception):
    """A command line mistake the user can fix; the message is one line that says how."""


class SpecError(ValueError):
    """A study spec that cannot run; the message is one line naming the field and the fix."""


class PackError(ValueError):
    """Configurations that cannot share a pack; the message names the field."""


class DataError(ValueError):
    """A data set the user asked for cannot be had; the message says how to fix it."""


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the trial cannot go on."""


class StudyFolderError(ValueError):
    """A study folder with files vaesweep did not write; the message is one line naming the file and the fix."""


class StudyFailed(RuntimeError):
    """Every trial of a study failed; the message names the first one and its error."""


class StudyInterrupted(KeyboardInterrupt):
    """A study stopped by Ctrl+C (Ray ends its trials and returns): run the same command again to resume."""


class RayVersionError(UsageError):
    """A Ray other than the versions vaesweep/study/ray_compat.py was checked against; the message says which."""


USER_ERRORS = (UsageError, SpecError, PackError, DataError, TrainingDiverged, StudyFolderError)
