"""Failed-login rate limiting per user name and per client address (in the server's memory)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class LoginLimiter:
    """Allows ``per_user`` failures per user and ``per_address`` per address in ``window_s``."""

    def __init__(self, per_user: int = 5, per_address: int = 20, window_s: float = 300.0) -> None:
        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails[key]
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def retry_after(self, user: str, address: str) -> int:
        """Seconds to wait before another attempt is allowed (0: go ahead)."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key, limit in (
                (f"u:{user.lower()}", self.per_user),
                (f"a:{address}", self.per_address),
            ):
                q = self._recent(key, now)
                if len(q) >= limit:
                    waits.append(int(self.window_s - (now - q[0])) + 1)
            return max(waits, default=0)

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._fails[f"u:{user.lower()}"].append(now)
            self._fails[f"a:{address}"].append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._fails.pop(f"u:{user.lower()}", None)
