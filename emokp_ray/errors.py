"""The one exception type for mistakes a user can fix (bad files, flags, checkpoints).

The CLI prints a `UserError` as one line and exits non-zero, with no traceback; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, worded so the message alone says what and where."""
