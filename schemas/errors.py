"""The one base of every error that is the user's to fix.

A :class:`UserError` carries one line that names the problem and the fix (a bad option,
a missing manifest, a model SPEC that cannot be loaded). The ``tda`` command line shows
it as ``Error: <message>`` on stderr with exit status 1, and ``tda serve`` answers it
with a 400; anything else is a bug and keeps its traceback.

Each layer declares its own error (``ConfigError`` here, ``StageError`` in
``attribution/io``, ``EncoderError`` in ``attribution/encoders``, ...) as a subclass of
``UserError``, so the command line maps them all in one place without importing them.
``UserError`` is a ``ValueError``: code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Something the user can fix; ``str(error)`` is one line naming the fix."""
