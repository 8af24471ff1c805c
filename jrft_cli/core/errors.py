"""The one exception type jrft turns into a clean one-line CLI error."""


class JrftError(Exception):
    """A user-facing error: its message is one line naming the bad value and the valid choices."""
