"""Per-engine step-time model learned online: recursive least squares from the engine's profile.

Two small linear regressions, the shape of `engine_adapter.base.StepProfile`:

    prefill seconds      ~ a + b * tokens + f * pairs      x = [1, tokens / 1024, pairs / 2^22]
    decode step seconds  ~ c + d * batch + e * kv_tokens   x = [1, batch / 64, kv_tokens / 65536]

where pairs = tokens * (context + tokens / 2) is the prefill's attention work: each new token attends
to the `context` tokens already in the KV (prefix-cache hit, earlier chunks) and, causally, to half
of its own chunk on average (features are scaled internally so the 3x3 systems stay well
conditioned; coefficients are reported in the profile's units). Each is a Bayesian linear
regression with the profile as the prior mean and exponentially forgotten data, kept in information
form:

    I_t = lambda * I_{t-1} + (1 - lambda) * I_0 + w x x^T / sigma^2
    h_t = lambda * h_{t-1} + (1 - lambda) * I_0 theta_0 + w x y / sigma^2
    theta_t = argmin_{sign-constrained theta}  theta^T I_t theta - 2 h_t^T theta

Unrolled, I_t = I_0 + sum_s lambda^(t-s) w_s x_s x_s^T / sigma^2: the prior keeps a constant weight and
data is forgotten with factor lambda (effective memory 1 / (1 - lambda) observations). This is RLS
with exponential forgetting (same estimate as the gain form k = P x / (lambda + x^T P x)) except that
forgetting is "stabilised" toward the prior: the covariance P = I^-1 never exceeds the prior's, so
there is no covariance wind-up when the input is not exciting (e.g. always the same batch), and with
no data the estimate stays exactly at the prior.

Non-physical values: an observation with a negative or non-finite time or size is ignored (counted).
A coefficient may not take the opposite sign of its prior (a zero prior means non-negative); the
constrained optimum is found exactly by enumerating which coefficients sit at zero (n <= 3). The
helpers never return a negative time.

Pure: no clock, no I/O; everything time-related is passed in. Not thread-safe: one owner (the
decision core) observes and predicts.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from engine_adapter.base import StepProfile

PREFILL_TOKEN_SCALE = 1024.0
PREFILL_PAIR_SCALE = float(2**22)  # a 2,896-token prompt alone: ~1 unit; 8,192 tokens over 8,192 cached: 24
DECODE_BATCH_SCALE = 64.0
DECODE_KV_SCALE = 65536.0


class _RLS:
    """Information-form RLS with stabilised forgetting toward a Gaussian prior, sign constraints."""

    def __init__(
        self,
        theta0: np.ndarray,
        prior_std: np.ndarray,
        noise_std: float,
        forgetting: float,
    ) -> None:
        self.n = len(theta0)
        self.theta0 = theta0.astype(np.float64)
        self.info0 = np.diag(1.0 / prior_std.astype(np.float64) ** 2)
        self.h0 = self.info0 @ self.theta0
        self.inv_noise_var = 1.0 / (noise_std * noise_std)
        self.lam = forgetting
        # the running sums as Python floats: a 3x3 update in numpy costs ~5x its arithmetic in
        # allocations (the same operations in the same order: the same values bit for bit)
        self._info0 = self.info0.tolist()
        self._h0 = self.h0.tolist()
        self.info = [row[:] for row in self._info0]
        self.h = self._h0[:]
        # sign of each coefficient allowed: +1 (>= 0) or -1 (<= 0), from the prior
        self.signs = np.where(self.theta0 < 0.0, -1.0, 1.0)
        self.n_obs = 0
        self.n_rejected = 0
        self.abs_rel_residual = 0.0  # EWMA of |y - x.theta| / y, before the update
        self._theta: np.ndarray | None = self.theta0.copy()
        self._last_theta = self.theta0.tolist()  # the last solved estimate: observations are scored against it

    # Solving (with the sign constraints) costs ~100 us; observing is an O(n^2) update. The
    # residual is scored against the last solved estimate, so a stream of observations without
    # reads costs no solve at all: the estimate is solved when someone asks for it.

    def observe(self, x: tuple[float, ...], y: float, weight: float) -> None:
        if y > 0:
            t = self._last_theta  # n = 3: the dot product in a fixed order (sum() compensates from 3.12)
            r = abs(y - (x[0] * t[0] + x[1] * t[1] + x[2] * t[2])) / y
            a = max(1.0 / (self.n_obs + 1), 0.02)
            self.abs_rel_residual += a * (r - self.abs_rel_residual)
        lam, keep = self.lam, 1.0 - self.lam
        wx = [(weight * self.inv_noise_var) * v for v in x]
        self.info = [[lam * i + keep * i0 + w * v for i, i0, v in zip(row, row0, x)]
                     for row, row0, w in zip(self.info, self._info0, wx)]
        self.h = [lam * h + keep * h0 + w * y for h, h0, w in zip(self.h, self._h0, wx)]
        self.n_obs += 1
        self._theta = None

    def theta(self) -> np.ndarray:
        if self._theta is None:
            self._theta = self._solve()
            self._last_theta = self._theta.tolist()
        return self._theta

    def _solve(self) -> np.ndarray:
        info, h = np.array(self.info), np.array(self.h)
        theta = np.linalg.solve(info, h)
        if np.all(theta * self.signs >= 0.0):
            return theta
        # Exact sign-constrained minimum of the quadratic: try every set of coefficients pinned at
        # zero (largest free set first) and keep the feasible candidate with the lowest objective.
        best: np.ndarray | None = None
        best_obj = math.inf
        idx = list(range(self.n))
        for k in range(self.n - 1, -1, -1):
            for free in itertools.combinations(idx, k):
                cand = np.zeros(self.n)
                if free:
                    f = list(free)
                    cand[f] = np.linalg.solve(info[np.ix_(f, f)], h[f])
                if np.any(cand * self.signs < 0.0):
                    continue
                obj = float(cand @ info @ cand - 2.0 * h @ cand)
                if obj < best_obj:
                    best, best_obj = cand, obj
        assert best is not None  # the all-zero candidate is always feasible
        return best

    def std(self, x: tuple[float, ...]) -> float:
        """Posterior standard deviation of x.theta (seconds), ignoring the sign constraint."""
        v = float(np.dot(x, np.linalg.solve(np.array(self.info), x)))
        return math.sqrt(max(v, 0.0))


@dataclass(frozen=True, slots=True)
class _Scales:
    prefill: np.ndarray
    decode: np.ndarray


class StepTimeModel:
    """Online prefill and decode step-time model for one engine, starting from its profile.

    prior_rel_std: prior standard deviation of each coefficient, relative to the profile's value
        (floored so that a zero coefficient can still move: 1 ms per 1024 prefill tokens or per 2^22
        attention pairs, 0.1 ms per 64 sequences or per 65536 KV tokens, 1 ms / 0.1 ms for the
        intercepts).
    prefill_noise_s, decode_noise_s: assumed measurement noise (seconds) of one observation. The
        ratio prior_std / noise_std sets how many observations it takes to move off the prior.
    """

    def __init__(
        self,
        profile: StepProfile,
        forgetting: float = 0.999,
        *,
        prior_rel_std: float = 1.0,
        prefill_noise_s: float = 0.005,
        decode_noise_s: float = 0.001,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        if not (prior_rel_std > 0 and prefill_noise_s > 0 and decode_noise_s > 0):
            raise ValueError("prior_rel_std and noise levels must be > 0")
        coefs = (profile.prefill_a, profile.prefill_b, profile.decode_c, profile.decode_d, profile.decode_e,
                 profile.prefill_f)
        if not all(math.isfinite(v) for v in coefs):
            raise ValueError(f"profile has a non-finite coefficient: {profile}")
        self.prior = StepProfile(*coefs)
        self.forgetting = forgetting
        self._scales = _Scales(
            prefill=np.array([1.0, PREFILL_TOKEN_SCALE, PREFILL_PAIR_SCALE]),
            decode=np.array([1.0, DECODE_BATCH_SCALE, DECODE_KV_SCALE]),
        )
        p0 = np.array([profile.prefill_a, profile.prefill_b, profile.prefill_f]) * self._scales.prefill
        d0 = np.array([profile.decode_c, profile.decode_d, profile.decode_e]) * self._scales.decode
        p_floor = np.array([1e-3, 1e-3, 1e-3])
        d_floor = np.array([1e-4, 1e-4, 1e-4])
        self._prefill = _RLS(p0, np.maximum(prior_rel_std * np.abs(p0), p_floor), prefill_noise_s, forgetting)
        self._decode = _RLS(d0, np.maximum(prior_rel_std * np.abs(d0), d_floor), decode_noise_s, forgetting)

    # -- observations -------------------------------------------------------------------------
    def observe_prefill(self, tokens: float, seconds: float, context: float = 0.0, *,
                        weight: float = 1.0) -> bool:
        """One prefill of `tokens` uncached prompt tokens after `context` tokens already in the KV (its
        prefix-cache hit; earlier chunks when a chunk is observed) took `seconds`. False if ignored."""
        if not (_ok(tokens, seconds, weight) and math.isfinite(context) and context >= 0):
            self._prefill.n_rejected += 1
            return False
        self._prefill.observe(self._xp(tokens, context), float(seconds), float(weight))
        return True

    def observe_decode(self, batch: float, kv_tokens: float, seconds: float, weight: float = 1.0) -> bool:
        """One decode step over `batch` sequences holding `kv_tokens` took `seconds`."""
        if not (_ok(kv_tokens, seconds, weight) and math.isfinite(batch) and batch >= 1):
            self._decode.n_rejected += 1
            return False
        self._decode.observe(self._xd(batch, kv_tokens), float(seconds), float(weight))
        return True

    # -- estimates ----------------------------------------------------------------------------
    def profile(self) -> StepProfile:
        """The current estimate, in the profile's units (seconds, per token, per sequence)."""
        p = self._prefill.theta() / self._scales.prefill
        d = self._decode.theta() / self._scales.decode
        return StepProfile(float(p[0]), float(p[1]), float(d[0]), float(d[1]), float(d[2]), float(p[2]))

    def prefill_time(self, tokens: float, context: float = 0.0) -> float:
        """Seconds to prefill `tokens` new tokens after `context` tokens already in the KV."""
        return max(0.0, float(np.dot(self._xp(max(0.0, tokens), max(0.0, context)), self._prefill.theta())))

    def decode_time(self, batch: float, kv_tokens: float) -> float:
        return max(0.0, float(np.dot(self._xd(max(0.0, batch), max(0.0, kv_tokens)), self._decode.theta())))

    def prefill_std(self, tokens: float, context: float = 0.0) -> float:
        """Posterior std (seconds) of the mean prefill time: how sure the model is, not the noise."""
        return self._prefill.std(self._xp(max(0.0, tokens), max(0.0, context)))

    def decode_std(self, batch: float, kv_tokens: float) -> float:
        """Posterior std (seconds) of the mean decode step time."""
        return self._decode.std(self._xd(max(0.0, batch), max(0.0, kv_tokens)))

    def state(self) -> dict[str, object]:
        """JSON-friendly view for the admin API and the console."""
        cur, pr = self.profile(), self.prior
        return {
            "profile": _as_dict(cur),
            "prior": _as_dict(pr),
            "forgetting": self.forgetting,
            "prefill": {
                "observations": self._prefill.n_obs,
                "rejected": self._prefill.n_rejected,
                "abs_rel_residual": self._prefill.abs_rel_residual,
            },
            "decode": {
                "observations": self._decode.n_obs,
                "rejected": self._decode.n_rejected,
                "abs_rel_residual": self._decode.abs_rel_residual,
            },
        }

    def _xp(self, tokens: float, context: float = 0.0) -> tuple[float, float, float]:
        t = float(tokens)
        return 1.0, t / PREFILL_TOKEN_SCALE, t * (float(context) + t / 2) / PREFILL_PAIR_SCALE

    def _xd(self, batch: float, kv_tokens: float) -> tuple[float, float, float]:
        return 1.0, float(batch) / DECODE_BATCH_SCALE, float(kv_tokens) / DECODE_KV_SCALE


def _ok(size: float, seconds: float, weight: float) -> bool:
    return (
        math.isfinite(size)
        and size >= 0
        and math.isfinite(seconds)
        and seconds >= 0
        and math.isfinite(weight)
        and weight > 0
    )


def _as_dict(p: StepProfile) -> dict[str, float]:
    return {
        "prefill_a": p.prefill_a,
        "prefill_b": p.prefill_b,
        "decode_c": p.decode_c,
        "decode_d": p.decode_d,
        "decode_e": p.decode_e,
        "prefill_f": p.prefill_f,
    }
