"""The error every client raises: one readable line, the status code and the server's message."""

from __future__ import annotations


class ClientError(RuntimeError):
    """One readable line: the status code and the server's message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message
