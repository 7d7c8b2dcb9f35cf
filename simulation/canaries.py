"""Canaries for the membership audit: mislabelled images planted in the sites' training data.

A model that generalises barely memorises an average training image, so an attack on
ordinary members says little about the worst case that differential privacy bounds.
Privacy audits (Jagielski et al. 2020; Nasr et al. 2021) therefore plant canaries,
examples that a model memorises if it memorises anything: here, training images given a
wrong label. Of ``2 x count`` canaries drawn at random from the sites' training sets,
half stay there with their wrong label (members) and half are withdrawn (non-members).
The attack scores each canary by the model's loss on its wrong label; how well that
tells members from non-members measures how much the model memorised single examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medfed.errors import ConfigError
from medfed.models.classification.data import LabelledImages
from medfed.simulation.audit import example_losses, score_attack
from medfed.simulation.partition import SiteShard


@dataclass
class Canaries:
    members: LabelledImages  # trained on, with their wrong labels
    outsiders: LabelledImages  # withdrawn before training, wrong labels too
    planted: list[np.ndarray]  # per site, the members' positions in its training set

    def without_members(self, sites: list[SiteShard]) -> list[SiteShard]:
        """The sites with their planted canaries left out: the ordinary members, for the
        attacks on ordinary images, which a mislabelled canary would skew."""
        return [SiteShard(site.name, site.train.subset(np.setdiff1d(np.arange(len(site.train)), planted)),
                          site.val) for site, planted in zip(sites, self.planted)]


def wrong_labels(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Another class for every image (uniform among the others); multi-label rows inverted."""
    if labels.ndim == 2:
        return (1 - labels).astype(labels.dtype)
    offset = rng.integers(1, max(num_classes, 2), size=len(labels))
    return ((labels + offset) % max(num_classes, 2)).astype(labels.dtype)


def plant_canaries(sites: list[SiteShard], count: int, num_classes: int, seed: int) -> Canaries:
    """Relabel ``count`` random training images in place (members) and withdraw ``count``
    more (non-members). Each site gives canaries in proportion to its training set."""
    sizes = [len(s.train) for s in sites]
    if 2 * count > sum(sizes) // 2:
        raise ConfigError(f"evaluation.audit_canaries={count}: 2 x {count} canaries would be more than "
                          f"half of the {sum(sizes)} training images")
    rng = np.random.default_rng([seed, 17])
    owner = np.repeat(np.arange(len(sites)), sizes)
    position = np.concatenate([np.arange(n) for n in sizes])
    drawn = rng.choice(len(owner), 2 * count, replace=False)
    is_member = np.zeros(2 * count, bool)
    is_member[:count] = True
    members, outsiders, positions = [], [], []
    for i, site in enumerate(sites):
        mine = owner[drawn] == i
        planted, withdrawn = position[drawn[mine & is_member]], position[drawn[mine & ~is_member]]
        train = site.train
        labels = train.labels.copy()
        labels[planted] = wrong_labels(labels[planted], num_classes, rng)
        members.append(LabelledImages(train.images[planted], labels[planted]))
        outsiders.append(LabelledImages(train.images[withdrawn],
                                        wrong_labels(train.labels[withdrawn], num_classes, rng)))
        keep = np.setdiff1d(np.arange(len(train)), withdrawn)
        site.train = LabelledImages(train.images, labels, train.sites).subset(keep)
        positions.append(np.searchsorted(keep, planted))
    return Canaries(LabelledImages.concat(members), LabelledImages.concat(outsiders), positions)


def canary_attack(model: torch.nn.Module, canaries: Canaries, kind: str, device: torch.device,
                  seed: int = 0) -> dict:
    """Loss-threshold attack on the canaries: a low loss on a wrong label betrays a member."""
    member_loss = example_losses(model, canaries.members, kind, device)
    outsider_loss = example_losses(model, canaries.outsiders, kind, device)
    return score_attack("canary loss-threshold", -member_loss, -outsider_loss, np.random.default_rng(seed))
