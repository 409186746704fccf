"""The one exception type for bad input; `comedian <stage>` prints it as one line and exits 1."""


class InputError(ValueError):
    """Bad input (a file, a field, a config value). The message names the file and the field."""
