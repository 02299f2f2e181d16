"""Per-tenant rate limits: requests per second and tokens per minute, as token buckets.

A request is refused while either bucket lacks what it asks (one request; its prompt and one
output token), with the whole seconds until it would not; an admitted one is charged its prompt
and predicted output, reconciled with the real tokens when it finishes. Pure: `now` is passed in.
"""
from __future__ import annotations

from controlplane.core.admission import TokenBucket


class RateLimits:
    def __init__(self) -> None:
        self._rps: dict[str, TokenBucket] = {}
        self._tpm: dict[str, TokenBucket] = {}

    def refusal(self, now: float, tenant: str, prompt_tokens: int, rps: float | None,
                tpm: float | None) -> tuple[str, float] | None:
        """(the refusal's reason, its Retry-After in s) when a limit holds the request back, else None."""
        if rps is not None:
            bucket = _bucket(self._rps, tenant, rps, max(1.0, rps), now)
            wait = bucket.wait_for(now, 1.0)
            if wait > 0:
                return "rate_limited_requests", float(max(1, int(wait + 0.999)))
        if tpm is not None:
            bucket = _bucket(self._tpm, tenant, tpm / 60.0, tpm, now)
            wait = bucket.wait_for(now, prompt_tokens + 1)
            if wait > 0:
                return "rate_limited_tokens", float(max(1, int(wait + 0.999)))
        return None

    def take(self, now: float, tenant: str, tokens: float, rps: float | None, tpm: float | None) -> None:
        """Charge an admitted request (after `refusal` found room): one request, `tokens` tokens."""
        if rps is not None:
            self._rps[tenant].take(now, 1.0)
        if tpm is not None:
            self._tpm[tenant].take(now, tokens)

    def reconcile(self, now: float, tenant: str, overcharged: float) -> None:
        """A finished request's tokens/min charge corrected by what it really used."""
        tpm = self._tpm.get(tenant)
        if tpm is not None:
            tpm.give(now, overcharged)


def _bucket(buckets: dict[str, TokenBucket], tenant: str, rate: float, burst: float, now: float) -> TokenBucket:
    b = buckets.get(tenant)
    if b is None or b.rate != rate:  # a policy change of the limit starts a fresh bucket
        b = buckets[tenant] = TokenBucket.full(rate, burst, now)
    return b
