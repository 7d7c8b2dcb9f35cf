"""Keeps a simulation going when the process of a virtual site dies mid-round.

Flower's Ray backend (1.41) puts an actor back into its pool even when the actor's
process has died, so every later message given to that actor fails too: the sites it
served would drop out for the rest of the run. This wrapper swaps the dead actor for a
fresh one. The message that was in flight still fails, as a site that died mid-round
should, and the round goes on with the others.
"""

from __future__ import annotations

import functools
import logging

import ray
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

log = logging.getLogger("medfed.simulation")


def replace_dead_workers() -> None:
    """Wrap `RayBackend.process_message` (once per process)."""
    original = RayBackend.process_message
    if getattr(original, "replaces_dead_workers", False):
        return

    @functools.wraps(original)
    def process_message(self, message, context):
        try:
            return original(self, message, context)
        except ray.exceptions.RayActorError as exc:
            dead = [a for a in list(self.pool.pool) if a._actor_id.hex() == exc.actor_id]
            for actor in dead:
                self.pool.pool.remove(actor)
                self.pool.pool.append(self.pool.create_actor_fn())
            if dead:
                log.warning("a site's worker process died; started a new one")
            raise

    process_message.replaces_dead_workers = True
    RayBackend.process_message = process_message
