"""The one exception type jrft turns into a clean one-line CLI error."""


class JrftError(ValueError):
    """A user-facing error: its message is one line naming the bad value and the valid choices.

    A ValueError, so library callers of jrft_cli.core can catch invalid settings the usual way."""
