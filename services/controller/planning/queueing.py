"""Tail latency of one batched instance: formation wait + queueing + service (vectorised).

The instance batches as the worker does (services/common/batching.py): a batch closes when
it holds `batch` requests or `max_delay` after its first request arrived, whichever is first;
batches are served one at a time.

With Poisson arrivals at rate lam and X ~ Poisson(lam * max_delay):
- batch size N = min(batch, 1 + X); its formation time F = min(max_delay, T_{batch-1}),
  T_k the k-th next arrival (Gamma(k, lam)); E[F] = (E[N] - 1) / lam exactly.
- Batches are the customers of a single server: arrival rate lam / E[N], service
  S = s(N) * noise with the measured coefficient of variation. Mean waiting time is
  Pollaczek-Khinchine with the measured service variance, E[W] = rho E[S] (1 + c_s^2) /
  (2 (1 - rho)), corrected for the batch inter-arrival variability c_a^2 (Allen-Cunneen:
  (1 + c_s^2) -> (c_a^2 + c_s^2); c_a^2 = 1 recovers P-K, i.e. M/G/1, exactly).
- Tail approximation: P(W > t) = rho exp(-rho t / E[W]) (exact for M/M/1; the waiting time is
  0 with probability 1 - rho and roughly exponential beyond). Formation tail: the first
  request of a batch waits longest, and first requests are 1/E[N] of all, so the all-request
  q-quantile is the first request's 1 - (1 - q) E[N] quantile of F. Service tail: s at the
  q-quantile batch size, times (1 + z_q cv).
- The p-quantile of the sum: mean of the sum + root-sum-square of each part's excess of its
  quantile over its mean (independent parts; exact for Gaussians, conservative for
  exponential ones since it never undercuts the largest part's quantile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from services.controller.planning.profiles import FloatArray

ArrayLike = FloatArray | float | list[float]
FIXED_POINT_ROUNDS = 5


def pk_mean_wait(
    arrival_rate: ArrayLike, mean_service: ArrayLike, service_scv: ArrayLike
) -> FloatArray:
    """Pollaczek-Khinchine: mean M/G/1 waiting time (inf when rho >= 1)."""
    lam, s, c2 = np.asarray(arrival_rate), np.asarray(mean_service), np.asarray(service_scv)
    rho = lam * s
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = rho * s * (1 + c2) / (2 * (1 - rho))
    return np.where(rho < 1, wait, np.inf)


def wait_quantile(mean_wait: ArrayLike, rho: ArrayLike, q: float) -> FloatArray:
    """q-quantile of the waiting time under P(W > t) = rho exp(-rho t / E[W])."""
    w, r = np.asarray(mean_wait, dtype=float), np.asarray(rho, dtype=float)
    tail = 1 - q
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(r > tail, w / r * np.log(r / tail), 0.0)
    return np.where(np.isfinite(w) & (r < 1), out, np.inf)


@dataclass(frozen=True)
class LatencyEstimate:
    """Per-candidate arrays (seconds unless noted)."""

    p99: FloatArray
    mean: FloatArray
    rho: FloatArray  # server utilisation
    mean_batch: FloatArray
    formation: FloatArray  # mean formation wait of a request
    queueing: FloatArray  # mean queueing wait
    service: FloatArray  # mean batch service time


def _poisson_tails(mean: FloatArray, kmax: int) -> list[FloatArray]:
    """[P(X >= k) for k in 0..kmax], X ~ Poisson(mean), by the pmf recurrence."""
    pmf = np.exp(-mean)
    cdf = pmf.copy()
    tails = [np.ones_like(mean)]
    for k in range(1, kmax + 1):
        tails.append(np.maximum(1.0 - cdf, 0.0))
        pmf = pmf * mean / k
        cdf = cdf + pmf
    return tails


@dataclass(frozen=True)
class _Moments:
    en: FloatArray  # E[N]
    es: FloatArray  # E[S]
    rho: FloatArray
    wait: FloatArray  # mean queueing wait of a batch
    slope: FloatArray  # service seconds per extra request
    n_q: FloatArray  # q-quantile of the batch size


def _batch_moments(
    lam: FloatArray,
    b: FloatArray,
    window: FloatArray,
    s1: FloatArray,
    sb: FloatArray,
    cv2: FloatArray,
    q: float,
) -> _Moments:
    """Batch size, service and waiting moments when a batch collects for `window` seconds."""
    kmax = int(b.max()) if b.size else 1
    # (batches of one: no tail is read)
    tails = _poisson_tails(lam * window, kmax) if kmax > 1 else []
    en = np.ones_like(lam)
    en2 = np.ones_like(lam)
    ef2 = np.zeros_like(lam)
    n_q = np.ones_like(lam)  # q-quantile of N
    lam2 = lam**2
    # One batch size for all (the usual case: callers split by batch): no masking needed.
    uniform = b.size > 0 and bool(b.min() == b.max())
    for k in range(1, kmax):
        sf = tails[k]
        if uniform:
            en = en + sf
            en2 = en2 + (2 * k + 1) * sf
            ef2 = ef2 + 2 * k * tails[k + 1] / lam2
            n_q = n_q + (sf > 1 - q)
            continue
        inside = k < b
        en = en + np.where(inside, sf, 0.0)  # E[N] = sum_{k=0}^{b-1} P(N > k)
        en2 = en2 + np.where(inside, (2 * k + 1) * sf, 0.0)  # E[N^2] = sum (2k+1) P(N > k)
        ef2 = ef2 + np.where(inside, 2 * k * tails[k + 1], 0.0) / lam2
        n_q = n_q + np.where(inside & (sf > 1 - q), 1.0, 0.0)
    ef = (en - 1) / lam
    var_f = np.maximum(ef2 - ef**2, 0.0)
    # Service of a batch: linear in its size between s1 (size 1) and sb (size b).
    slope = np.where(b > 1, (sb - s1) / np.maximum(b - 1, 1), 0.0)
    es = s1 + slope * (en - 1)
    es2 = (s1**2 + 2 * s1 * slope * (en - 1) + slope**2 * (en2 - 2 * en + 1)) * (1 + cv2)
    cs2 = np.maximum(es2 / es**2 - 1, 0.0)
    gap = 1 / lam + ef  # mean time between batches
    ca2 = (1 / lam**2 + var_f) / gap**2
    rho = es / gap
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = np.where(rho < 1, rho * es * (ca2 + cs2) / (2 * (1 - rho)), np.inf)
    return _Moments(en=en, es=es, rho=rho, wait=wait, slope=slope, n_q=n_q)


def _mean_batch(lam: FloatArray, b: FloatArray, window: FloatArray) -> FloatArray:
    """E[N] alone, summed as _batch_moments sums it (the formation wait needs only this)."""
    kmax = int(b.max()) if b.size else 1
    if kmax <= 1:
        return np.ones_like(lam)
    tails = _poisson_tails(lam * window, kmax)
    uniform = b.size > 0 and bool(b.min() == b.max())
    en = np.ones_like(lam)
    for k in range(1, kmax):
        en = en + (tails[k] if uniform else np.where(k < b, tails[k], 0.0))
    return en


def _fill_quantile(b: FloatArray, head_q: FloatArray, lam: FloatArray, d: FloatArray) -> FloatArray:
    """head_q-quantile of T_{b-1} ~ Gamma(b - 1, lam), only where it can fall below the delay
    d (elsewhere d, which min(d, .) then returns anyway): the inverse incomplete gamma is the
    slowest step of the model, its forward function far cheaper."""
    out = np.array(d, dtype=float, copy=True)
    shape = np.maximum(b - 1, 1)
    # P(T <= d) >= head_q  <=>  quantile <= d; a relative margin keeps boundary cases exact.
    need = b > 1
    if need.any():  # (batches of one fill at once: no gamma function to evaluate)
        need &= head_q <= special.gammainc(shape, lam * d) * (1 + 1e-9) + 1e-12
        out[need] = special.gammaincinv(shape[need], head_q[need]) / lam[need]
    out[b <= 1] = 0.0
    return out


def batched_latency(
    rate: ArrayLike,
    batch: ArrayLike,
    max_delay: ArrayLike,
    service_one: ArrayLike,
    service_full: ArrayLike,
    cv: ArrayLike,
    q: float = 0.99,
) -> LatencyEstimate:
    """Latency of requests at an instance with max batch `batch` and max delay `max_delay`.

    `service_one` / `service_full`: mean service of a batch of 1 / of `batch` (seconds);
    between them the service time is taken as linear in the batch size. Broadcasts over
    array arguments (one element per candidate configuration).
    """
    lam = np.maximum(np.asarray(rate, dtype=float), 1e-12)
    b = np.asarray(batch, dtype=float)
    d = np.maximum(np.asarray(max_delay, dtype=float), 0.0)
    s1 = np.asarray(service_one, dtype=float)
    sb = np.asarray(service_full, dtype=float)
    cv2 = np.asarray(cv, dtype=float) ** 2
    args: tuple[FloatArray, ...] = (lam, b, d, s1, sb, cv2)
    if any(a.shape != lam.shape for a in args):  # (nothing below writes into these)
        lam, b, d, s1, sb, cv2 = (np.array(a) for a in np.broadcast_arrays(*args))
    if b.ndim == 1 and len(b) > 4096 and len(np.unique(b)) > 1:
        # The moment sums run to the batch size: evaluate each batch size on its own.
        parts = [
            (idx, batched_latency(lam[idx], b[idx], d[idx], s1[idx], sb[idx], np.sqrt(cv2[idx]), q))
            for idx in (np.flatnonzero(b == v) for v in np.unique(b))
        ]
        fields = {}
        for name in ("p99", "mean", "rho", "mean_batch", "formation", "queueing", "service"):
            merged = np.empty_like(lam)
            for idx, part in parts:
                merged[idx] = getattr(part, name)
            fields[name] = merged
        return LatencyEstimate(**fields)
    # A batch is taken when the executor is free, so while it is busy the batch keeps
    # collecting: its collection window is the delay plus the queueing wait. Fixed point on
    # the window (the wait shrinks as batches grow).
    window = d
    # Batches of at most one: no moment depends on the window, nothing to iterate.
    for _ in range(FIXED_POINT_ROUNDS if b.size and b.max() > 1 else 0):
        m = _batch_moments(lam, b, window, s1, sb, cv2, q)
        busy = np.minimum(m.rho, 1.0) * m.es / 2 + np.where(np.isfinite(m.wait), m.wait, b / lam)
        window = (window + d + busy) / 2
    m = _batch_moments(lam, b, window, s1, sb, cv2, q)
    en, es, rho, wq, slope = m.en, m.es, m.rho, m.wait, m.slope
    wq_q = wait_quantile(wq, rho, q)
    # Formation (bounded by the delay): the first request waits F, the others about F / 2.
    formed_en = _mean_batch(lam, b, d)
    ef = (formed_en - 1) / lam
    wf = ef * (1 + (formed_en - 1) / 2) / formed_en
    head_q = np.clip(1 - (1 - q) * formed_en, 0.0, q)
    wf_q = np.minimum(d, _fill_quantile(b, head_q, lam, d))

    n_q = m.n_q
    s_q = (s1 + slope * (n_q - 1)) * (1 + special.ndtri(q) * np.sqrt(cv2))

    mean = wf + wq + es
    with np.errstate(invalid="ignore"):
        spread = np.sqrt(
            np.maximum(wf_q - wf, 0) ** 2
            + np.maximum(wq_q - wq, 0) ** 2
            + np.maximum(s_q - es, 0) ** 2
        )
    p99 = np.where(np.isfinite(wq), mean + spread, np.inf)
    return LatencyEstimate(
        p99=p99, mean=mean, rho=rho, mean_batch=en, formation=wf, queueing=wq, service=es
    )
