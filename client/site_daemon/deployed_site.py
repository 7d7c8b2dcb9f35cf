"""A deployed hospital as its ClientApp sees it: found from the SuperNode's ``node_config``.

``medfed site start SITE.yaml`` starts ``flower-supernode`` with ``site-config`` (the
absolute path of SITE.yaml) in its node config; every ClientApp process of that SuperNode
reads SITE.yaml, and the site's own files, from there. Nothing about the site comes from
the coordinator.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig

from medfed.client.site import Site
from medfed.errors import ConfigError

SITE_CONFIG_KEY = "site-config"  # node_config entry: the path of SITE.yaml


@lru_cache(maxsize=4)
def _load(path: str) -> DictConfig:
    from medfed.client.site_daemon.site_config import load_site_config

    return load_site_config(path)


def site_config_from(node_config) -> DictConfig:
    """The validated SITE.yaml named by ``node_config``; `ConfigError` if it is not there."""
    path = node_config.get(SITE_CONFIG_KEY) if node_config is not None else None
    if not isinstance(path, str) or not path:
        raise ConfigError(f"the SuperNode's node config has no '{SITE_CONFIG_KEY}': start it with "
                          "'medfed site start SITE.yaml'")
    return _load(path)


def name_index(name: str) -> int:
    """A stable number for the site's name: it seeds local training. The coordinator
    labels replies by the registered key that sent them, not by this number."""
    return zlib.crc32(name.encode()) % 100_000


@lru_cache(maxsize=4)
def _data(path: str) -> tuple:
    from medfed.client.site_daemon.site_config import read_site_data

    return read_site_data(_load(path))


def locate_deployed_site(node_config) -> Site:
    """The site this SuperNode serves, with the terms of its SITE.yaml."""
    from medfed.client.site_daemon.site_config import site_terms

    cfg = site_config_from(node_config)
    train, val = _data(node_config[SITE_CONFIG_KEY])
    return Site(cfg.name, name_index(cfg.name), train, val, Path(cfg.state_dir), cfg.device,
                torch.get_num_threads(), site_terms(cfg))
