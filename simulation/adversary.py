"""Simulated malicious and faulty sites, for studying attacks and defences.

Only ``medfed simulate`` adds this: a ClientApp mod around the honest site's code. A
malicious site (``attack.sites``) trains honestly, then corrupts what it sends; label
flipping instead corrupts the site's data when the harness writes it. Faults hit any
site at random, reproducibly from the seed, round and site: a dropout sends no update
(an error reply, which the server treats as a site that did not answer) and a straggler
answers ``faults.straggler_delay`` seconds late.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MessageType, RecordDict
from omegaconf import DictConfig

from medfed.models.classification.data import LabelledImages
from medfed.wire import SERVER_ROUND

SITE_DROPPED = 490  # error code of a simulated dropout
HISTORY_KEY = "medfed-sent-round-{}"  # a stale site's earlier updates, in its node state
log = logging.getLogger("medfed.simulation")


@dataclass(frozen=True)
class Misbehaviour:
    """What the simulated sites do wrong; small and picklable for the Simulation Engine."""

    seed: int
    behaviour: str = "none"
    sites: tuple[int, ...] = ()
    scale: float = 50.0
    noise_std: float = 0.1
    stale_rounds: int = 3
    dropout: float = 0.0
    straggler: float = 0.0
    straggler_delay: float = 0.0
    crash: float = 0.0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Misbehaviour:
        a, f = cfg.attack, cfg.faults
        return cls(cfg.seed, a.behaviour, tuple(a.sites), a.scale, a.noise_std, a.stale_rounds,
                   f.dropout, f.straggler, f.straggler_delay, f.crash)

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        """The mod: faults first (a dropped site does no work), then the site's own reply,
        then the attack on what it sends."""
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        site = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"][SERVER_ROUND])
        rng = np.random.default_rng([self.seed, rnd, site, 71])
        if rng.random() < self.dropout:
            log.info("site-%03d drops out of round %d (simulated)", site, rnd)
            return Message(Error(code=SITE_DROPPED, reason=f"site-{site:03d} dropped out (simulated fault)"),
                           reply_to=msg)
        if rng.random() < self.straggler:
            time.sleep(self.straggler_delay)
        reply = call_next(msg, context)
        if rng.random() < self.crash:  # the process dies after training, before it answers
            log.info("site-%03d crashes in round %d (simulated)", site, rnd)
            os.kill(os.getpid(), signal.SIGKILL)
        if site not in self.sites or reply.has_error() or self.behaviour in ("none", "label_flip"):
            return reply
        key = next(iter(reply.content.array_records))
        sent = reply.content[key]
        reply.content[key] = self.corrupt(sent, msg.content["arrays"], rng, context, rnd)
        return reply

    def corrupt(self, trained: ArrayRecord, global_arrays: ArrayRecord, rng: np.random.Generator,
                context: Context, rnd: int) -> ArrayRecord:
        """The attacked version of a malicious site's update (integer buffers are left alone)."""
        if self.behaviour == "stale":
            return self._stale(trained, context, rnd)
        out = {}
        for name, array in trained.items():
            w, g = array.numpy(), global_arrays[name].numpy()
            if not np.issubdtype(w.dtype, np.floating):
                out[name] = Array(w)
                continue
            if self.behaviour == "sign_flip":
                w = g - (w - g)
            elif self.behaviour == "scale":
                w = g + self.scale * (w - g)
            elif self.behaviour == "gaussian":
                w = w + rng.normal(0.0, self.noise_std, w.shape)
            elif self.behaviour == "nan":
                w = np.full_like(w, np.nan)
            out[name] = Array(np.asarray(w, dtype=array.numpy().dtype))
        return ArrayRecord(out)

    def _stale(self, trained: ArrayRecord, context: Context, rnd: int) -> ArrayRecord:
        """Send the update trained ``stale_rounds`` rounds ago (the oldest kept, early on)."""
        state: RecordDict = context.state
        state[HISTORY_KEY.format(rnd)] = trained
        kept = sorted(int(k.rsplit("-", 1)[1]) for k in state.array_records if k.startswith(HISTORY_KEY[:-2]))
        for old in kept:
            if old < rnd - self.stale_rounds:
                del state[HISTORY_KEY.format(old)]
        oldest = min(r for r in kept if r >= rnd - self.stale_rounds)
        return state[HISTORY_KEY.format(oldest)]


def flip_labels(data: LabelledImages, num_classes: int) -> LabelledImages:
    """The site's labels flipped: class c becomes C-1-c; multi-label rows are inverted."""
    labels = 1 - data.labels if data.labels.ndim == 2 else num_classes - 1 - data.labels
    return LabelledImages(data.images, labels.astype(data.labels.dtype), data.sites)
