"""Keep freed memory in the process, for DP-SGD on a CPU.

DP-SGD allocates its per-sample gradients (batch x parameters floats, 50 MB for
medfed's small CNN at batch 128) afresh at every step. glibc hands a freed block of
that size back to the kernel at once, and the next step page-faults it in again; on a
small CPU machine those faults cost about as much as the gradients' arithmetic.
Raising glibc's mmap and trim thresholds keeps the freed blocks in the heap for the
next step, at the price of a resident size that stays at its peak, as PyTorch's CPU
tuning guides advise (there, with jemalloc or tcmalloc). No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("medfed.allocator")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_KEEP_BYTES = 1 << 31
_outcome: bool | None = None  # tried once per process, whether it took or not


def keep_freed_memory() -> bool:
    """Tell glibc to keep blocks up to 2 GiB in the heap once freed; True when it took."""
    global _outcome
    if _outcome is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _outcome = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BYTES - 1))
        except (OSError, AttributeError):  # not glibc (macOS, musl): the default allocator stays
            _outcome = False
        log.debug("glibc keeps freed memory: %s", _outcome)
    return _outcome
