"""The ClientApp of a deployed hospital: ``clientapp`` of medfed's Flower app.

The same training as in simulation (`medfed.client.app`), with the site found from its
SuperNode's SITE.yaml and the site's own controls (policy, audit log, what may leave)
wrapped around it as a Flower mod.
"""

from flwr.app import Context, Error, Message

from medfed.client.app import make_client_app
from medfed.client.site_daemon.deployed_site import locate_deployed_site
from medfed.client.site_daemon.site_control import site_control_mod
from medfed.wire import MALFORMED_MESSAGE

app = make_client_app(lambda context: locate_deployed_site(context.node_config), mods=[site_control_mod])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Registered so that queries pass through the site's controls, which refuse and log
    them; a site answers train and evaluate messages only."""
    return Message(Error(code=MALFORMED_MESSAGE, reason="a site answers train and evaluate messages only"),
                   reply_to=msg)
