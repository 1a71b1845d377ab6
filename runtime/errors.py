"""The one error type every command turns into a clear message and exit code 2."""


class UserError(Exception):
    """A problem the user can fix (bad input, missing asset, mismatch); its message names the fix."""
