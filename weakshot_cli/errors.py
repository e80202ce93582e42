"""The one error type users see: a single line naming the file and the problem, exit code 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input or a refused operation; the CLI prints it as one line and exits 2."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(" ".join(text.splitlines()))  # one line, even with a library's multi-line reason in it


class Interrupted(Exception):
    """Ctrl-C in a run that keeps its finished work; the message says what was kept and how to go on. Not a
    KeyboardInterrupt, which Typer would turn into a silent exit: the CLI prints it as one line and exits 130."""
