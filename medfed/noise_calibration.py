"""The least Gaussian noise at which two independent accountants agree that epsilon stays
within its target.

Why two accountants: an accountant's epsilon is a numerical upper bound whose value
depends on its implementation (RDP orders, fractional orders whose series does not
converge, conversion to (epsilon, delta), discretisation). Opacus' RDP and Google's
dp-accounting RDP differ by up to 0.6% for the DP configs' sites, so noise that Opacus'
own search finds for epsilon 8 can spend 8.049 by dp-accounting. Choosing the noise so
that both stay within the target means that whoever recomputes a printed epsilon with
either library finds it within the target.

| mechanism | searched with first | then raised until this agrees |
| --- | --- | --- |
| sample-level, `privacy.accountant: rdp` | Opacus `RDPAccountant` | dp-accounting `RdpAccountant` |
| sample-level, `privacy.accountant: prv` | Opacus `PRVAccountant` | dp-accounting `PLDAccountant` |
| client-level (server/privacy.py) | Flower `RdpAccountant` (dp-accounting) | Opacus `RDPAccountant`, no sampling |

PRV and PLD are both numerical compositions of the privacy loss distribution and give
a tighter epsilon than RDP for the same noise (so less noise for the same target).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence

import dp_accounting
import numpy as np

MAX_NOISE = 1e6  # Opacus' own bound in get_noise_multiplier
RELATIVE_TOLERANCE = 1e-4  # the noise found is at most 0.01% above the least that works

EpsilonOf = Callable[[float], float]  # noise multiplier -> epsilon


def opacus_epsilon(accountant: str, noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps by Opacus' ``rdp`` or ``prv`` accountant."""
    from opacus.accountants import create_accountant  # imported when needed: see client/privacy.py

    counter = create_accountant(accountant)
    counter.history = [(noise, sample_rate, steps)]
    with np.errstate(divide="ignore"):  # Opacus' PRV takes log(1 - q), -inf when every example is sampled
        return float(counter.get_epsilon(delta=delta))


def dp_accounting_epsilon(accountant: str, noise: float, sample_rate: float, steps: int,
                          delta: float) -> float:
    """The same mechanism's epsilon by dp-accounting: RDP for Opacus' ``rdp``, PLD for ``prv``."""
    counter = (dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
               else dp_accounting.pld.PLDAccountant())
    step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise))
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # dp-accounting warns of each RDP order it skips; skipping only loosens its bound
    try:
        counter.compose(dp_accounting.SelfComposedDpEvent(step, steps))
        return float(counter.get_epsilon(delta))
    finally:
        absl.setLevel(level)


@functools.lru_cache(maxsize=256)  # a site asks again every round; PRV and PLD take seconds
def calibrated_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str = "rdp") -> float:
    """The least noise multiplier (to `RELATIVE_TOLERANCE`) at which ``steps`` DP-SGD steps
    at ``sample_rate`` spend at most ``target_epsilon`` by Opacus' ``accountant`` and by
    dp-accounting's counterpart; ``ValueError`` when no noise up to `MAX_NOISE` does."""
    mechanism = dict(sample_rate=sample_rate, steps=steps, delta=delta)
    return least_noise(
        [functools.partial(opacus_epsilon, accountant, **mechanism),
         functools.partial(dp_accounting_epsilon, accountant, **mechanism)],
        target_epsilon,
    )


def least_noise(accountants: Sequence[EpsilonOf], target: float) -> float:
    """The least noise (to `RELATIVE_TOLERANCE`) at which every accountant's epsilon is at
    most ``target``. Each accountant in turn raises the noise as far as it needs, so the
    later ones, which may be costly (PLD), are searched only near the answer; epsilon
    falls as noise grows, so the earlier ones stay within (checked again at the end)."""
    noise = 0.0
    while True:
        for epsilon in accountants:
            noise = _least_noise(epsilon, target, noise)
        if all(epsilon(noise) <= target for epsilon in accountants[:-1]):
            return noise


def _least_noise(epsilon: EpsilonOf, target: float, above: float) -> float:
    """The least noise >= ``above`` at which ``epsilon(noise) <= target``: a bracket, then
    regula falsi (Illinois) on log epsilon against log noise, which is nearly a straight
    line, so that a costly accountant is asked about 8 times rather than 15 by bisection.
    The noise returned always satisfies the target, whatever the accountant's numerics."""
    def excess(noise: float) -> float:  # > 0: over the target
        return math.log(max(epsilon(noise), 1e-300) / target)  # an accountant may round a tiny epsilon to 0

    low, f_low = above, excess(above) if above > 0 else math.inf
    if f_low <= 0:
        return above
    step = 2 * RELATIVE_TOLERANCE * above or 1.0  # the answer is usually just above ``above``
    high, f_high = low + step, excess(low + step)
    while f_high > 0:  # grow the bracket by doubling steps
        if high > MAX_NOISE:
            raise ValueError(f"no noise multiplier up to {MAX_NOISE:g} is enough")
        low, f_low, step = high, f_high, 2 * step
        high, f_high = low + step, excess(low + step)
    kept = None  # the end that stayed put last time: Illinois halves its value if it stays again
    while high - low > RELATIVE_TOLERANCE * high:
        mid = _secant(low, f_low, high, f_high)
        f_mid = excess(mid)
        if f_mid <= 0:
            high, f_high = mid, f_mid
            f_low, kept = (f_low / 2 if kept == "low" else f_low), "low"
        else:
            low, f_low = mid, f_mid
            f_high, kept = (f_high / 2 if kept == "high" else f_high), "high"
    return high


def _secant(low: float, f_low: float, high: float, f_high: float) -> float:
    """Where the line through the two ends (in log noise) crosses zero, kept off the ends;
    the midpoint while the lower end has no finite value."""
    if not math.isfinite(f_low) or low <= 0:
        return (low + high) / 2
    x_low, x_high = math.log(low), math.log(high)
    x = x_high - f_high * (x_high - x_low) / (f_high - f_low)
    margin = (x_high - x_low) * RELATIVE_TOLERANCE
    return math.exp(min(max(x, x_low + margin), x_high - margin))
