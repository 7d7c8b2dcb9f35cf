"""Client-level DP at the site: clip the update before it leaves (Flower's mods).

Flower's clipping mods expect the clipping key in every message they see; this mod
hands a training message to them only when the server runs client-side clipping, so
the same ClientApp serves runs without it.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from medfed.wire import DP_ADAPTIVE


def client_level_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN or msg.has_error():
        return call_next(msg, ctxt)
    config = next(iter(msg.content.config_records.values()), {})
    if KEY_CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    if config.get(DP_ADAPTIVE, False):
        return adaptiveclipping_mod(msg, ctxt, call_next)
    return fixedclipping_mod(msg, ctxt, call_next)
