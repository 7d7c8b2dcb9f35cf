"""The ClientApp: a site receives the global model, trains it locally and replies.

The reply holds the trained weights and aggregate metrics only (loss, number of
examples, local validation metrics, the site's index, and under DP the privacy it has
spent): never images or per-sample data. A site refuses, with an error reply, a round
outside its terms or one that would take it past its privacy budget
(`medfed.client.site_policy.accept_round`, the same check for simulated and deployed sites).
The same app runs in the Simulation Engine and on a hospital's SuperNode; only the
`locate_site` callable differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medfed.client.local_round import local_train, local_validate
from medfed.client.privacy import ACCOUNTANT_FILE, SiteAccountant
from medfed.client.privacy_mods import client_level_clipping_mod
from medfed.client.round_cache import RoundCache
from medfed.client.site import Site
from medfed.client.site_policy import accept_round
from medfed.models import local_training
from medfed.models.spec import ModelSpec
from medfed.site_terms import RoundRefused
from medfed.strategies.fedbn import keep_local_norm
from medfed.tasks import task
from medfed.wire import DP_MECHANISM, FEDBN_FLAG, HISTOGRAMS, PRIVACY_KEYS, SERVER_ROUND, UNIT_WEIGHT, TrainSettings

NORM_STATE_FILE = "local_norm.pt"
log = logging.getLogger("medfed.client")


def settings_from(config: ConfigRecord, site: Site) -> TrainSettings:
    """The round's hyper-parameters, with a seed unique to this site and round."""
    settings = TrainSettings.from_config(config, ModelSpec.from_config(config))
    return settings.for_site(int(config[SERVER_ROUND]), site.index)


def _site_model(site: Site, arrays: ArrayRecord, config: ConfigRecord) -> torch.nn.Module:
    """The global model as this site uses it: with its own norm layers under FedBN."""
    torch.set_num_threads(site.threads)
    model = ModelSpec.from_config(config).build()
    model.load_state_dict(arrays.to_torch_state_dict())
    norm_file = site.state_dir / NORM_STATE_FILE
    if bool(config.get(FEDBN_FLAG, False)) and norm_file.is_file():
        keep_local_norm(model, torch.load(norm_file, weights_only=True))
    return model


def _save_local_norm(site: Site, model: torch.nn.Module) -> None:
    """FedBN: keep this site's normalisation layers for its next round (written whole)."""
    site.state_dir.mkdir(parents=True, exist_ok=True)
    norm_file = site.state_dir / NORM_STATE_FILE
    partial = norm_file.with_suffix(".partial")
    torch.save(keep_local_norm(model, None), partial)
    partial.replace(norm_file)


def train_site(site: Site, arrays: ArrayRecord, config: ConfigRecord) -> tuple[ArrayRecord, MetricRecord]:
    """One round of local training at ``site``, starting from the global ``arrays``; refused
    (`RoundRefused`) outside the site's terms or past its budget, before anything is built.
    Under DP it trains at the site's own delta and accountant, and reports that epsilon."""
    spent = SiteAccountant(site.state_dir, site.terms.privacy.accountant)
    private = accept_round(site.terms, config, len(site.train), spent)
    dp, accountant = (private.dp, spent) if private is not None else (None, None)
    device = local_training.resolve_device(site.device)
    settings = settings_from(config, site)
    model = _site_model(site, arrays, config)

    result = local_train(model, site.train, settings, device, dp, accountant)
    # the local model on validation data, where the task finds that cheap (`Task.validates_after_training`)
    val = local_validate(model, site.val, settings, device) if task(settings.task).validates_after_training else {}

    if bool(config.get(FEDBN_FLAG, False)):
        _save_local_norm(site, model)

    metrics = {
        "train_loss": result["train_loss"],
        "num-examples": int(result["num-examples"]),
        "site": site.index,
        **{f"val_{k}": v for k, v in val.items()},
        **{k: result[k] for k in PRIVACY_KEYS if k in result},
    }
    if config.get(DP_MECHANISM) == "client":
        metrics[UNIT_WEIGHT] = 1  # client-level DP averages sites with equal weights
    model.cpu()
    return ArrayRecord(model.state_dict()), MetricRecord(metrics)


def evaluate_site(site: Site, arrays: ArrayRecord, config: ConfigRecord) -> MetricRecord:
    """The global model on the site's validation data: metrics and, for binary tasks,
    the score histogram from which the server picks the operating point."""
    device = local_training.resolve_device(site.device)
    model = _site_model(site, arrays, config)
    settings = settings_from(config, site)
    raw = local_validate(model, site.val, settings, device, histogram=True)
    metrics = {(k if k in HISTOGRAMS else f"val_{k}"): v for k, v in raw.items()}
    return MetricRecord({**metrics, "num-examples": len(site.val), "site": site.index})


def make_client_app(locate_site: Callable[[Context], Site], mods: Sequence = ()) -> ClientApp:
    """A ClientApp whose site is found from its Context (the SuperNode's ``node_config``,
    and for `flwr run .` the run's config); ``mods`` run outside the clipping mod (a
    deployed site's own controls see what really leaves it)."""
    app = ClientApp(mods=[*mods, client_level_clipping_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = locate_site(context)
        received, config = msg.content["arrays"], msg.content["config"]
        # a round sent again after a coordinator restart is answered without training again
        cache = RoundCache(site.state_dir, (ACCOUNTANT_FILE, NORM_STATE_FILE))
        try:
            arrays, metrics = cache.answer(received, config, lambda: train_site(site, received, config))
        except RoundRefused as exc:  # outside the site's terms, or past its privacy budget
            log.warning("%s refuses round %s: %s", site.name, msg.content["config"][SERVER_ROUND], exc)
            return Message(Error(code=exc.code, reason=f"{site.name}: {exc}"), reply_to=msg)
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site = locate_site(context)
        metrics = evaluate_site(site, msg.content["arrays"], msg.content["config"])
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app
