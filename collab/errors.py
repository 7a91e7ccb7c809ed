"""The one exception type for mistakes a user can fix; entry points print it as a single line."""


class UserError(Exception):
    """Bad input or set-up. The message says what is wrong and what to do; no traceback is shown."""
