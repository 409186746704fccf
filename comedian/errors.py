"""The exception types that `comedian <stage>` prints as one line (exit 1) instead of a traceback."""


class InputError(ValueError):
    """Bad input (a file, a field, a config value). The message names the file and the field."""


class NoSpaceError(InputError):
    """A write refused for lack of disk space or quota; the message names the path and the bytes needed."""
