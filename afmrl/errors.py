"""The one error type for problems with what the user gave: the CLI prints it as one line.

A :class:`UserError` says what is wrong with an input (a path, a column, a number, a checkpoint) in
one sentence that names it. ``afmrl.cli.main`` is the only place that turns it into ``exit 2`` and a
line on stderr; anything else that escapes a command is a bug and keeps its traceback.

Library functions raise the subclasses below, which are also ``ValueError`` (or
``FileNotFoundError``), so Python callers can keep catching the built-in types.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message is one line that names it."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user named does not exist (or is not the kind of thing expected there)."""


def one_line(text: object, limit: int = 400) -> str:
    """``text`` as one line (white space folded), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


__all__ = ["MissingPathError", "UserError", "one_line"]
