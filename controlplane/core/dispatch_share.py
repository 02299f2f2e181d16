"""Who has been getting the dispatches lately: the measured side of a backlogged tenant's wait.

`DecisionCore._ahead` models a queued request's wait from weights and arrival shares. For a tenant
that has been backlogged for a whole window, what it actually received is the better estimate: it
already includes the other tier's share, the light tenants' bursts and everything the model leaves
out. The core takes the longer of the two waits for a deferrable request, so an admitted batch
request keeps its deadline even when a heavy tenant's modelled share is too generous (without it,
a batch tenant sending 72 % of all requests at 3x overload was forecast a 52 s wait and waited
110 s; half of its admitted requests missed their deadline). Pure.
"""
from __future__ import annotations

from collections import deque

SHARE_WINDOW_S = 20.0  # the window of the measured shares
MIN_BACKLOG_S = 3.0  # how long a tenant must have been backlogged before its share says anything


class DispatchShares:
    """Dispatches per tenant over the last `window_s`, and since when each tenant has been backlogged."""

    def __init__(self, window_s: float = SHARE_WINDOW_S, min_backlog_s: float = MIN_BACKLOG_S) -> None:
        self.window_s, self.min_backlog_s = window_s, min_backlog_s
        self._recent: deque[tuple[float, str, str]] = deque()
        self._counts: dict[str, int] = {}
        self._tier_counts: dict[str, int] = {}
        self._backlogged_since: dict[tuple[str, str], float] = {}

    def dispatched(self, now: float, tenant: str, tier: str) -> None:
        self._expire(now)
        self._recent.append((now, tenant, tier))
        self._counts[tenant] = self._counts.get(tenant, 0) + 1
        self._tier_counts[tier] = self._tier_counts.get(tier, 0) + 1

    def tier_rate(self, now: float, tier: str) -> float:
        """Requests/s dispatched from `tier` over the window."""
        self._expire(now)
        return self._tier_counts.get(tier, 0) / self.window_s

    def backlog(self, now: float, tenant: str, tier: str, queued: int) -> None:
        """The tenant's queue in `tier` now holds `queued` requests."""
        if not queued:
            self._backlogged_since.pop((tenant, tier), None)
        else:
            self._backlogged_since.setdefault((tenant, tier), now)

    def measured_share(self, now: float, tenant: str, tier: str) -> float | None:
        """The tenant's share of all dispatches over the window, if it has been backlogged in `tier`
        for `min_backlog_s` at least (before that, what it got says only what it asked for).
        Smoothed by one dispatch, so a tenant that got nothing has a small share, not none."""
        since = self._backlogged_since.get((tenant, tier))
        if since is None or now - since < self.min_backlog_s:
            return None
        self._expire(now)
        return (self._counts.get(tenant, 0) + 1) / (len(self._recent) + 1)

    def _expire(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window_s:
            _, tenant, tier = self._recent.popleft()
            self._tier_counts[tier] -= 1
            self._counts[tenant] -= 1
            if not self._counts[tenant]:
                del self._counts[tenant]
