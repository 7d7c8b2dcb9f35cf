"""A synthesis experiment's data: the labelled images a classifier reads (MedMNIST or an
image folder), since the GAN is conditioned on their labels."""

from medfed.models.classification.data import load_experiment

__all__ = ["load_experiment"]
