"""Central (no federation) training of the conditional GAN on PneumoniaMNIST, and how
good its images are: TSTR AUC on the real test set, Fréchet distance on the features of
a SmallCNN trained on real images, and the share of near-copies of training images.

The GAN trains on train + val; the test set is the TSTR test set and the held-out
reference for memorisation. Each epoch is one `train_gan` call with a fresh seed and
fresh Adam state, as one federated round with one local epoch would be. Prints one line
per epoch, with the metrics after the epochs in ``--eval-at``, and the seconds per epoch
of GAN training (evaluation not counted).

Torch runs on one thread by default: on a small shared CPU, two threads that wait for
each other while another process holds a core made steps 5-30x slower.

    python benchmarks/gan_recipe.py [--epochs 6] [--eval-at 2 3 4 6] [--lr 2e-4] [--batch 32]
        [--width 32] [--latent 64] [--per-class 2000] [--threads 1] [--grid gan_samples.png]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from medfed.models import local_training
from medfed.models.classification import train as training
from medfed.models.classification.data import LabelledImages
from medfed.models.classification.network import build_classifier
from medfed.models.synthesis.metrics import classifier_features, frechet_distance, memorisation, tstr_auc
from medfed.models.synthesis.network import ConditionalGAN, generate
from medfed.models.synthesis.pictures import save_sample_grid
from medfed.models.synthesis.train import train as train_gan
from medfed.wire import TrainSettings

DATA = Path(os.environ.get("MEDFED_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def load(split: str, source) -> LabelledImages:
    return LabelledImages(source[f"{split}_images"], source[f"{split}_labels"])


def feature_classifier(data: LabelledImages, device: torch.device, epochs: int) -> torch.nn.Module:
    """A SmallCNN trained on real images: its features define the Fréchet distance."""
    local_training.seed_everything(0)
    model = build_classifier("cnn", 1, 2, 28)
    training.train(model, data, TrainSettings("binary", 2, epochs=epochs, batch_size=64), device)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--eval-at", type=int, nargs="*", help="epochs after which to evaluate (default: last)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--tstr-epochs", type=int, default=3)
    parser.add_argument("--feature-epochs", type=int, default=3)
    parser.add_argument("--no-augment", action="store_true", help="no random translation for D")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, help="PNG of samples after the last epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    source = np.load(DATA / "pneumoniamnist.npz")
    real = LabelledImages.concat([load("train", source), load("val", source)])
    test = load("test", source)
    eval_at = set(args.eval_at or [args.epochs])

    started = time.perf_counter()
    features_net = feature_classifier(load("train", source), device, args.feature_epochs)
    test_features = classifier_features(features_net, test.images, device)
    floor = frechet_distance(classifier_features(features_net, real.images, device), test_features)
    print(f"feature classifier: {time.perf_counter() - started:.0f} s; "
          f"Fréchet(real train+val, real test) = {floor:.3f}")

    torch.manual_seed(args.seed)
    gan = ConditionalGAN(latent_dim=args.latent, width=args.width)
    settings = TrainSettings("binary", 2, epochs=1, batch_size=args.batch, lr=args.lr,
                                      augment=not args.no_augment)
    tstr_settings = TrainSettings("binary", 2, epochs=args.tstr_epochs, batch_size=64, seed=args.seed)
    train_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        settings.seed = args.seed * 1000 + epoch
        tic = time.perf_counter()
        losses = train_gan(gan, real, settings, device)
        train_seconds += time.perf_counter() - tic
        line = (f"epoch {epoch:3d}  D {losses['train_loss']:.3f}  G {losses['g_loss']:.3f}  "
                f"{train_seconds / epoch:.1f} s/epoch")
        if epoch in eval_at:
            tic = time.perf_counter()
            fake = generate(gan, args.per_class, seed=args.seed, device=device)
            auc = tstr_auc(fake, test, tstr_settings, device)
            fd = frechet_distance(classifier_features(features_net, fake.images, device), test_features)
            copies = memorisation(fake.images, real.images, test.images)
            line += (f"  TSTR AUC {auc:.3f}  Fréchet {fd:.3f}  memorised {copies['memorised_fraction']:.4f} "
                     f"(nn gen {copies['median_generated_nn']:.2f} / real {copies['median_real_nn']:.2f})"
                     f"  eval {time.perf_counter() - tic:.0f} s")
        print(line, flush=True)
    if args.grid:
        fake = generate(gan, 8, seed=args.seed, device=device)
        print("samples:", save_sample_grid(fake.images, fake.labels, args.grid))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
