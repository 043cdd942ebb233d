"""The one error type the CLI turns into a one-line message and exit code 2."""


class MtbenchError(Exception):
    """Bad input or configuration: the message names what is wrong (file, column, row, value)."""

    exit_code = 2
