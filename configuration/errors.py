"""The one error type for bad input, importable by every layer of the package without importing a command line."""


class InputError(ValueError):
    """Something the user gave (a flag, a file, the data, a checkpoint, a model folder) cannot be used: the message
    names it and the fix, and every command line prints it in one line, without a traceback."""
