"""Failed-login rate limiting (in the server's memory), bounded and decaying.

Failures count per (user name, address), per address and per user name from everywhere (a
higher limit). A lock lasts until the oldest counted failure is ``window_s`` old, and attempts
refused while locked are not counted, so a lock always ends ``window_s`` after the last counted
failure; one attacker's address cannot lock a user out of sign-ins from other addresses.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable


class LoginLimiter:
    """``per_user`` failures per user and address, ``per_address`` per address, and
    ``per_user * spread`` per user from all addresses, within ``window_s``."""

    def __init__(
        self,
        per_user: int = 5,
        per_address: int = 20,
        window_s: float = 300.0,
        *,
        spread: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self.spread, self.clock = spread, clock
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails[key]
        while q and now - q[0] > self.window_s:
            q.popleft()
        if not q:
            del self._fails[key]  # memory stays bounded by recent failures
            return deque()
        return q

    def _keys(self, user: str, address: str) -> list[tuple[str, int]]:
        name = user.lower()
        return [
            (f"ua:{name}\0{address}", self.per_user),
            (f"a:{address}", self.per_address),
            (f"u:{name}", self.per_user * self.spread),
        ]

    def retry_after(self, user: str, address: str) -> int:
        """Seconds to wait before another attempt is allowed (0: go ahead)."""
        now = self.clock()
        with self._lock:
            waits = []
            for key, limit in self._keys(user, address):
                q = self._recent(key, now)
                if len(q) >= limit:
                    waits.append(int(self.window_s - (now - q[-limit])) + 1)
            return max(waits, default=0)

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key, _ in self._keys(user, address):
                self._fails[key].append(now)

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._fails.pop(self._keys(user, address)[0][0], None)
