"""Small per-site shards of a MedMNIST file, for trying a deployed federation quickly.

Each site gets its own disjoint slice as a site-style npz (``SITE/data.npz``: train and
val splits, as SITE.yaml's ``npz`` format reads it), and the coordinator a
``coordinator/pneumoniamnist.npz`` holding its own test slice. The slices are fixed by a
seed, so a demo or a test sees the same data every time.

    python -m medfed.demo_shards SOURCE.npz OUT_DIR north,south,east
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TRAIN_PER_SITE, VAL_PER_SITE = 48, 12
COORDINATOR = {"train": 64, "val": 16, "test": 64}  # the coordinator evaluates on its test slice only


def write_shards(source: Path, sites: list[str], out: Path) -> Path:
    """Write ``OUT/SITE/data.npz`` for each site and the coordinator's file; return its folder."""
    data = np.load(source)
    rng = np.random.default_rng(0)
    train, val = rng.permutation(len(data["train_labels"])), rng.permutation(len(data["val_labels"]))
    for i, name in enumerate(sites):
        t = train[i * TRAIN_PER_SITE:(i + 1) * TRAIN_PER_SITE]
        v = val[i * VAL_PER_SITE:(i + 1) * VAL_PER_SITE]
        (out / name).mkdir(parents=True)
        np.savez(out / name / "data.npz", train_images=data["train_images"][t], train_labels=data["train_labels"][t],
                 val_images=data["val_images"][v], val_labels=data["val_labels"][v])
    coordinator = out / "coordinator"
    coordinator.mkdir()
    np.savez(coordinator / "pneumoniamnist.npz",
             **{f"{split}_{kind}": data[f"{split}_{kind}"][:n] for split, n in COORDINATOR.items()
                for kind in ("images", "labels")})
    return coordinator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medfed.demo_shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a MedMNIST npz (train, val and test splits)")
    parser.add_argument("out", type=Path, help="folder to write the shards into")
    parser.add_argument("sites", help="site names, comma-separated")
    args = parser.parse_args(argv)
    print(write_shards(args.source, [s for s in args.sites.split(",") if s], args.out))


if __name__ == "__main__":
    main()
