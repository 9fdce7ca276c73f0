"""The exceptions every layer may raise; this module imports nothing of gantrain's.

- :class:`UserError`: bad input or a situation the user can fix; the entry points print its one sentence
  and exit non-zero, never a traceback.
- :class:`Interrupted`: training stopped on SIGINT/SIGTERM after saving.
- :class:`RankFailed`: a rank of a multi-process job died or failed; the other ranks were stopped.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem the user can fix: the message is one sentence naming the problem and the fix."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving; ``signum`` says which, ``path`` what was saved."""

    def __init__(self, signum: int, path: Path | None):
        super().__init__(f"stopped by signal {signum}; saved {path}")
        self.signum, self.path = signum, path


class RankFailed(UserError):
    """A rank of a multi-process job died or failed; the other ranks were stopped."""
