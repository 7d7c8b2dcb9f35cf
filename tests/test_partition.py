import numpy as np
import pytest

from medfed.config import load_config
from medfed.errors import ConfigError, DataError
from medfed.models.classification.data import LabelledImages
from medfed.simulation.partition import partition
from medfed.simulation.shift import site_scanners


def _pool(n=600, classes=2, sites=None):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, classes, n)
    images = (labels[:, None, None] * 100 + rng.integers(0, 50, (n, 8, 8))).astype(np.uint8)
    return LabelledImages(images, labels, sites)


def _rows(pool, shards):
    """Identify each image by its bytes to check that shards cover the pool exactly."""
    keys = []
    for s in shards:
        for part in (s.train, s.val):
            keys += [im.tobytes() + bytes([int(lab)]) for im, lab in zip(part.images, part.labels)]
    return keys


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "quantity"])
def test_every_scheme_splits_the_whole_pool(scheme):
    pool = _pool()
    cfg = load_config(None, [f"partition.scheme={scheme}", "partition.num_sites=5"])
    shards = partition(pool, cfg)
    assert len(shards) == 5
    keys = _rows(pool, shards)
    assert len(keys) == len(pool)  # every image lands in exactly one shard
    for s in shards:
        assert len(s.val) >= 1 and len(s.train) >= 2


def test_low_alpha_skews_labels_more_than_iid():
    pool = _pool(2000)
    def spread(overrides):
        shards = partition(pool, load_config(None, overrides + ["partition.num_sites=8"]))
        return np.std([np.mean(np.concatenate([s.train.labels, s.val.labels])) for s in shards])
    assert spread(["partition.scheme=dirichlet", "partition.alpha=0.3", "partition.min_site_size=2"]) > 3 * spread(["partition.scheme=iid"])


def test_pathological_gives_one_class_per_site():
    shards = partition(_pool(400, classes=4), load_config(None, ["partition.scheme=pathological", "partition.num_sites=4"]))
    for s in shards:
        assert len(np.unique(np.concatenate([s.train.labels, s.val.labels]))) == 1


def test_quantity_skew_gives_growing_sizes():
    shards = partition(_pool(), load_config(None, ["partition.scheme=quantity", "partition.num_sites=4"]))
    sizes = [len(s.train) + len(s.val) for s in shards]
    assert sizes == sorted(sizes) and sizes[-1] > 3 * sizes[0]


def test_natural_sites_from_column():
    pool = _pool(90, sites=np.array(["north", "south", "east"] * 30))
    shards = partition(pool, load_config(None, ["partition.scheme=natural"]))
    assert sorted(s.name for s in shards) == ["east", "north", "south"]
    assert all(len(s.train) + len(s.val) == 30 for s in shards)


def test_natural_without_site_column():
    with pytest.raises(ConfigError, match="site column"):
        partition(_pool(), load_config(None, ["partition.scheme=natural"]))


def test_more_sites_than_samples():
    with pytest.raises(DataError, match="only 20 images"):
        partition(_pool(20), load_config(None, ["partition.num_sites=50"]))


def test_same_seed_same_partition():
    cfg = load_config(None, ["partition.num_sites=5"])
    a, b = partition(_pool(), cfg), partition(_pool(), cfg)
    assert [len(s.train) for s in a] == [len(s.train) for s in b]
    assert all(np.array_equal(x.train.labels, y.train.labels) for x, y in zip(a, b))


def test_scanners_change_images_differently_per_site():
    pool = _pool(10)
    assert site_scanners(3, 0.0, seed=1) == [None, None, None]
    scanners = site_scanners(3, 1.0, seed=1)
    assert len({s.gamma for s in scanners}) == 3
    outs = [s.apply(pool, np.random.default_rng(0)).images for s in scanners]
    assert not np.array_equal(outs[0], pool.images)
    assert not np.array_equal(outs[0], outs[1])
    assert outs[0].shape == pool.images.shape and outs[0].dtype == np.uint8
