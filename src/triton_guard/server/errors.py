"""ServerError: the one error of the server subpackage (its modules share it, none owns it)."""

from __future__ import annotations


class ServerError(RuntimeError):
    """The server could not be started; the message is one line for a person."""
