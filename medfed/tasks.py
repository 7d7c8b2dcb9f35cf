"""The task table: every task medfed trains, by the name a config's ``task`` gives it.

A task is one folder under ``models/`` with the same files in each, the same functions
in each file, so callers ask the table and never branch on a task's name:

- ``data.py``: ``load_experiment(cfg) -> ExperimentData`` (the pool the sites split, the test set);
- ``network.py``: ``build(spec) -> nn.Module``;
- ``train.py``: ``train(model, data, settings, device, private=None)``, one round of local
  training (DP-SGD when ``private`` wraps it), and ``validate(model, data, settings, device,
  histogram=False)``, the metrics a site reports on its validation data;
- ``metrics.py``: ``METRIC_NAMES``, the validation metrics a site may send, and
  ``scorer(cfg, spec, test, train_pool, out, device)``, how the server scores the global
  model on the test set;
- ``pictures.py`` (where the task draws any): ``save_pictures(cfg, spec, weights, test, out)``.

What differs between tasks beyond those files is a row's few facts below. Rows import
nothing: a task's modules load when first asked for, so light commands stay light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from medfed.errors import ConfigError


@dataclass(frozen=True)
class Task:
    name: str  # the config's ``task``
    folder: str  # its folder under models/
    networks: tuple[str, ...]  # the ``model.name`` values it builds
    # the network predicts each image's label: label-flip attacks, the membership audit
    # and its canaries apply
    predicts_labels: bool = False
    # `ModelSpec.label_kind`; None: the data's label space (binary, multiclass or multilabel)
    label_kind: str | None = None
    # images come with label maps (`SegmentationImages`): networks see training patches
    # (``data.segmentation.patch_size``) in 2D or 3D, an acquisition shift transforms the
    # maps alike, and a site may hold out whole cases as its own test set
    label_maps: bool = False
    # the ClientApp also scores the model it has just trained on its validation data (cheap
    # for a classifier; a segmentation's whole-image inference costs as much as a round)
    validates_after_training: bool = False
    # sample-level DP makes the whole network DP-compatible; the GAN's generator never sees a
    # real image, so it keeps its BatchNorm and only the discriminator is made private
    private_whole_network: bool = True
    pictures: bool = False  # it has a pictures.py

    def file(self, name: str) -> ModuleType:
        """One of the task's files (``data``, ``network``, ``train``, ``metrics``, ``pictures``)."""
        return importlib.import_module(f"medfed.models.{self.folder}.{name}")


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("classification", "classification", ("cnn", "resnet18", "densenet121"),
         predicts_labels=True, validates_after_training=True),
    Task("segmentation", "segmentation", ("unet", "basicunet"),
         label_kind="segmentation", label_maps=True, pictures=True),
    Task("gan", "synthesis", ("dcgan",),
         label_kind="gan", private_whole_network=False, pictures=True),
)}


def task(name: str) -> Task:
    """The row for ``name``; a `ConfigError` naming the setting for an unknown task."""
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}' (task): choose from {', '.join(TASKS)}")
    return TASKS[name]
