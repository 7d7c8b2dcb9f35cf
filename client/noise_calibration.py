"""The least Gaussian noise at which two independent accountants agree that epsilon stays
within its target.

Why two accountants: an accountant's epsilon is a numerical bound whose value depends
on its implementation (RDP orders, conversion to (epsilon, delta), discretisation).
Opacus' RDP and Google's dp-accounting RDP differ by up to about 0.1% for the same
mechanism, so noise searched to spend exactly epsilon 8 by one of them can spend 8.002
by the other. Medfed reports one accountant's epsilon; choosing the noise so that the
other one stays within the target as well means nobody who recomputes a printed epsilon
with either library finds it over the target.

| what | reported by (searched first) | checked against |
| --- | --- | --- |
| sample-level, `privacy.accountant: rdp` | Opacus `RDPAccountant` | dp-accounting `RdpAccountant` |
| sample-level, `privacy.accountant: prv` | Opacus `PRVAccountant` | dp-accounting `PLDAccountant` |
| client-level (server/privacy.py) | Flower `RdpAccountant` (dp-accounting) | Opacus `RDPAccountant`, no sampling |

PRV and PLD are both numerical compositions of the privacy loss distribution and give
a tighter epsilon than RDP for the same noise (so less noise for the same target).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import dp_accounting
import numpy as np
from opacus.accountants import create_accountant

MAX_NOISE = 1e6  # Opacus' own bound in get_noise_multiplier
RELATIVE_TOLERANCE = 1e-3  # the noise found is at most 0.1% above the least that works
REFERENCE = {"rdp": "dp-accounting RDP", "prv": "dp-accounting PLD"}  # the check on each accountant

EpsilonOf = Callable[[float], float]  # noise multiplier -> epsilon


def opacus_epsilon(accountant: str, noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps by Opacus' ``rdp`` or ``prv`` accountant."""
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
    counter.compose(dp_accounting.SelfComposedDpEvent(step, steps))
    return float(counter.get_epsilon(delta))


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
    most ``target``. The first is searched alone, and the noise then raised until all
    agree: the others, which may be costly (PLD), are evaluated only near the answer."""
    first, others = accountants[0], accountants[1:]
    noise = _raise_until(lambda s: first(s) <= target, 0.0)
    # above that noise the first is within (epsilon falls as noise grows): ask it last
    return _raise_until(lambda s: all(eps(s) <= target for eps in (*others, first)), noise)


def _raise_until(within: Callable[[float], bool], start: float) -> float:
    """The least noise >= ``start`` at which ``within`` holds, by bisection; epsilon falls
    as noise grows. The value returned always satisfies ``within``, even if an
    accountant's numerics are not perfectly monotone."""
    if start > 0 and within(start):
        return start
    # grow the bracket by doubling steps: the answer is usually just above ``start``
    low, step = start, 2 * RELATIVE_TOLERANCE * start or 1.0
    high = low + step
    while not within(high):
        if high > MAX_NOISE:
            raise ValueError(f"no noise multiplier up to {MAX_NOISE:g} is enough")
        low, step = high, step * 2
        high = low + step
    while high - low > RELATIVE_TOLERANCE * high:
        mid = (low + high) / 2
        low, high = (low, mid) if within(mid) else (mid, high)
    return high
