"""ClientError: what `wardgate` and `wardgatectl` report to the user before exiting non-zero."""

from __future__ import annotations


class ClientError(Exception):
    """Anything the CLI reports to the user and exits non-zero for; `problems` are listed after it."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
