"""How good, useful and private the global GAN's images are, judged on the server.

- TSTR: a classifier trained only on generated images, scored (AUC) on the real test set;
- a Fréchet distance on the features of a medfed classifier trained on the real training
  data (not Inception FID: those weights are not available offline, so values are only
  comparable between medfed runs);
- the memorised fraction: generated images closer to a training image than almost all
  real held-out images are (see `synthesis_metrics.memorisation`);
- a sample grid per round (``samples/round-NNN.png``) and a final ``samples.png``.
In simulation the server holds the public dataset's pool and test set, so it can judge;
a deployed coordinator would run the same judge on data it is allowed to hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from medfed.models import local_training
from medfed.models.classification import train as training
from medfed.models.classification.data import LabelledImages
from medfed.models.classification.network import build_classifier
from medfed.models.spec import ModelSpec
from medfed.models.synthesis.metrics import classifier_features, frechet_distance, memorisation, tstr_auc
from medfed.models.synthesis.network import generate
from medfed.models.synthesis.pictures import GRID_PER_CLASS, SAMPLES, save_sample_grid
from medfed.wire import TrainSettings


class SynthesisJudge:
    """``judge(model, round)`` -> ``tstr_auc``, ``frechet_distance``, ``memorised_fraction``..."""

    def __init__(self, cfg: DictConfig, spec: ModelSpec, train: LabelledImages, test: LabelledImages,
                 device: torch.device, out: Path | None) -> None:
        self.cfg, self.spec, self.train, self.test = cfg, spec, train, test
        self.device, self.out = device, out
        self._features = None  # the real-data feature classifier, trained at first use
        self._real_features = None

    def settings(self, seed: int) -> TrainSettings:
        """How the TSTR and feature classifiers train: medfed's classifier recipe."""
        return TrainSettings(kind="binary" if self.spec.num_classes == 2 else "multiclass",
                                      num_classes=self.spec.num_classes, epochs=self.cfg.gan.tstr_epochs,
                                      batch_size=64, lr=2e-3, seed=seed)

    def feature_classifier(self) -> torch.nn.Module:
        if self._features is None:
            local_training.seed_everything(self.cfg.seed)
            model = build_classifier("cnn", self.spec.in_channels, self.spec.num_classes, self.spec.image_size)
            training.train(model, self.train, self.settings(self.cfg.seed), self.device)
            self._features = model
            self._real_features = classifier_features(model, self.test.images, self.device)
        return self._features

    def each_round(self, model, rnd: int) -> None:
        """A sample grid every round: cheap, and what people look at."""
        if self.out is not None:
            fakes = generate(model, GRID_PER_CLASS, self.cfg.seed, self.device)
            save_sample_grid(fakes.images, fakes.labels, self.out / SAMPLES / f"round-{rnd:03d}.png",
                             GRID_PER_CLASS)

    def __call__(self, model, threshold: float, rnd: int) -> dict[str, float]:
        fakes = generate(model, self.cfg.gan.samples_per_class, self.cfg.seed + rnd, self.device)
        features = classifier_features(self.feature_classifier(), fakes.images, self.device)
        copies = memorisation(fakes.images, self.train.images, self.test.images)
        return {
            "tstr_auc": tstr_auc(fakes, self.test, self.settings(self.cfg.seed + rnd), self.device),
            "frechet_distance": frechet_distance(self._real_features, features),
            "memorised_fraction": copies["memorised_fraction"],
            "median_nearest_training_distance": copies["median_generated_nn"],
            "median_real_nearest_training_distance": copies["median_real_nn"],
        }
