"""Test hook: die abruptly at a named point of a round, as a power cut would.

Resuming a run must give the same result wherever it was killed, and the moments that
matter (a site's budget written but its reply not yet stored, the replies in but no
checkpoint yet, a checkpoint half written) are too short to hit with a timer. With
``MEDFED_KILL_AT=POINT:ROUND`` in the environment, the process that reaches ``POINT`` in
round ``ROUND`` sends SIGKILL to its whole process group: the medfed process, and in
simulation every Ray process it started. Start medfed in a process group of its own
(``start_new_session=True``) when you use it; unset, it does nothing.

Points, in the order a round reaches them:

- ``site-trained``: a site has trained (and written its privacy budget) but not stored its reply;
- ``site-stored``: a site has stored its reply but not sent it;
- ``round-replies``: the server has every reply of the round, nothing aggregated or saved;
- ``checkpoint-write``: the new checkpoint is written to its temporary file, not yet renamed.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "MEDFED_KILL_AT"
POINTS = ("site-trained", "site-stored", "round-replies", "checkpoint-write")


def kill_point(point: str, rnd: int) -> None:
    """End the process group here if ``MEDFED_KILL_AT`` names this point and round."""
    if os.environ.get(KILL_AT) == f"{point}:{rnd}":
        os.killpg(os.getpgrp(), signal.SIGKILL)
