"""``tda serve``'s ``/health``: whether the root it serves still matches its manifests.

A sizes-only check of the whole root (:func:`tda.attribution.io.verify.check_root` with
``hashes=False``: every manifest present and consistent, every listed file present at its
recorded size, plus any file this process has already refused as corrupt) runs in a worker
thread, at most once per :data:`RECHECK_SECONDS`; in between ``/health`` answers from the
last result, so it stays cheap on the event loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["RECHECK_SECONDS", "RootHealth"]

# A root does not change under a running server unless something is wrong; a few seconds
# of staleness bounds the cost (a stat per file) without hiding damage for long.
RECHECK_SECONDS = 5.0
# Problems listed in a /health answer (the rest are counted).
LISTED_PROBLEMS = 5


@dataclass(frozen=True)
class HealthState:
    ok: bool
    problems: tuple[str, ...]  # one line each, the first LISTED_PROBLEMS
    more: int  # problems not listed
    checked_at: float


class RootHealth:
    """The cached health of ``root`` (see the module docstring); thread-safe."""

    def __init__(self, root: str, recheck: float = RECHECK_SECONDS) -> None:
        self.root = root
        self.recheck = recheck
        self._lock = threading.Lock()
        self._state: HealthState | None = None

    def stale(self) -> bool:
        state = self._state
        return state is None or time.monotonic() - state.checked_at >= self.recheck

    def check(self) -> HealthState:
        """Re-check the root (blocking: call it from a worker thread) and return the state."""
        from tda.attribution.io.verify import check_root

        with self._lock:
            if not self.stale():
                return self._state  # another thread just checked
            result = check_root(self.root, hashes=False)
            errors = [p for p in result.problems if p.severity == "error"]
            self._state = HealthState(
                ok=not errors,
                problems=tuple(p.line for p in errors[:LISTED_PROBLEMS]),
                more=max(0, len(errors) - LISTED_PROBLEMS),
                checked_at=time.monotonic(),
            )
            return self._state
