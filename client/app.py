"""The ClientApp: a site receives the global model, trains it locally and replies.

The reply holds the trained weights and aggregate metrics only (loss, number of
examples, local validation metrics, the site's index): never images or per-sample data.
The same app runs in the Simulation Engine and on a hospital's SuperNode; only the
`locate_site` callable differs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medfed.client import training
from medfed.client.site import Site
from medfed.models import build_model
from medfed.strategies import FEDBN_FLAG
from medfed.strategies.fedbn import keep_local_norm

NORM_STATE_FILE = "local_norm.pt"


def settings_from(config: ConfigRecord, site: Site) -> training.TrainSettings:
    """The round's hyper-parameters, with a seed unique to this site and round."""
    return training.TrainSettings(
        kind=str(config["label-kind"]),
        num_classes=int(config["num-classes"]),
        epochs=int(config["local-epochs"]),
        steps=int(config["local-steps"]) if int(config.get("local-steps", 0)) > 0 else None,
        batch_size=int(config["batch-size"]),
        optimizer=str(config["optimizer"]),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        weight_decay=float(config["weight-decay"]),
        class_weighting=bool(config["class-weighting"]),
        augment=bool(config["augment"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        amp=bool(config["amp"]),
        seed=int(config["seed"]) * 100_003 + int(config["server-round"]) * 1_009 + site.index,
    )


def model_from(config: ConfigRecord) -> torch.nn.Module:
    return build_model(
        str(config["model"]),
        int(config["in-channels"]),
        int(config["num-classes"]),
        int(config["image-size"]),
        float(config["dropout"]),
    )


def train_site(site: Site, arrays: ArrayRecord, config: ConfigRecord) -> tuple[ArrayRecord, MetricRecord]:
    """One round of local training at ``site``, starting from the global ``arrays``."""
    torch.set_num_threads(site.threads)
    device = training.resolve_device(site.device)
    settings = settings_from(config, site)
    model = model_from(config)
    model.load_state_dict(arrays.to_torch_state_dict())

    norm_file = site.state_dir / NORM_STATE_FILE
    if bool(config.get(FEDBN_FLAG, False)):
        saved = torch.load(norm_file, weights_only=True) if norm_file.is_file() else None
        keep_local_norm(model, saved)

    result = training.train(model, site.train, settings, device)
    val = training.evaluate(model, site.val, settings.kind, device)

    if bool(config.get(FEDBN_FLAG, False)):
        site.state_dir.mkdir(parents=True, exist_ok=True)
        partial = norm_file.with_suffix(".partial")
        torch.save(keep_local_norm(model, None), partial)
        partial.replace(norm_file)

    metrics = {
        "train_loss": result["train_loss"],
        "num-examples": int(result["num-examples"]),
        "site": site.index,
        **{f"val_{k}": v for k, v in val.items()},
    }
    model.cpu()
    return ArrayRecord(model.state_dict()), MetricRecord(metrics)


def make_client_app(locate_site: Callable[[dict], Site]) -> ClientApp:
    """A ClientApp whose site is found from the SuperNode's ``node_config``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = locate_site(context.node_config)
        arrays, metrics = train_site(site, msg.content["arrays"], msg.content["config"])
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    return app
