"""One ClientApp task at a site, in medfed's own process: check the app, then run medfed.

Flower's ``flwr-clientapp`` installs the run's FAB and imports the code it names (with
the FAB's folder first on ``sys.path``) before any hook of the app could look at it, so a
coordinator, or whoever submits a run, could run its own code beside the site's data.
medfed's site daemon starts this process instead (`medfed.client.site_daemon.app_launcher`). It pulls
the task from the SuperNode as ``flwr-clientapp`` does (Flower's own functions), then

1. checks the FAB (`medfed.client.site_daemon.app_check`) against the site's trusted entities and
   writes the verdict, with the run id and the hashes of the FAB and of the run config, to
   the site's audit log;
2. runs medfed's installed ClientApp (`medfed.client.site_daemon.deployed.app`) on the message when the
   app is accepted, or answers with an error when it is not. Nothing of the FAB is ever
   installed or imported.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flwr.app import Error, Message
from flwr.common.constant import SubStatus
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from medfed.client.site_daemon.app_check import AppRefused, CheckedApp, check_app, run_config_digest
from medfed.client.site_daemon.deployed_site import SITE_CONFIG_KEY
from medfed.wire import APP_REFUSED

log = logging.getLogger("medfed.site")


def trusted_entities(cfg) -> dict | None:
    if not cfg.coordinator.get("trusted_entities"):
        return None  # an insecure trial: site_config allows this on loopback only
    from medfed.federation.credentials import load_trusted_entities

    return load_trusted_entities(cfg.coordinator.trusted_entities)


def admit(message: Message, context, run, fab, site_yaml: str) -> tuple[CheckedApp | None, str | None]:
    """Check the task's app for the site of ``site_yaml``: (checked app, None) or (None, reason).
    Either way the audit log has the verdict first; an unwritable log refuses the task."""
    from medfed.client.site_daemon.audit_log import AuditLog
    from medfed.client.site_daemon.site_config import load_site_config

    cfg = load_site_config(site_yaml)
    audit = AuditLog(cfg.audit_log, cfg.name)
    fields = {"run_id": message.metadata.run_id, "message_id": message.metadata.message_id,
              "fab_sha256": fab.hash_str, "run_config_sha256": run_config_digest(context.run_config)}
    try:
        if context.node_config.get(SITE_CONFIG_KEY) != site_yaml:
            raise AppRefused("the task's node config names another SITE.yaml")
        if run.override_config:
            raise AppRefused(f"the run overrides the app's config ({', '.join(sorted(run.override_config))})")
        checked = check_app(fab.content, context.run_config, trusted_entities(cfg))
    except AppRefused as exc:
        log.error("%s refuses run %s: %s", cfg.name, message.metadata.run_id, exc)
        audit.event("app", "refused", reason=str(exc), **fields)
        return None, f"{cfg.name}: app refused: {exc}"
    audit.event("app", "accepted", signed_by=checked.signed_by, **fields)
    return checked, None


def run_task(client: RuntimeHttpClient, site_yaml: str) -> int:
    """Pull one task, check its app, answer it; the process's exit code."""
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details, code = None, SubStatus.FAILED, "medfed site task failed", 1
    try:
        message, context, run, fab = pull_task_input(client)
        try:
            checked, reason = admit(message, context, run, fab, site_yaml)
        except Exception as exc:  # noqa: BLE001 (SITE.yaml or the audit log unusable: send nothing)
            log.exception("the site cannot check run %s", message.metadata.run_id)
            checked, reason = None, f"the site cannot check the run's app ({type(exc).__name__})"
        if checked is None:
            reply = Message(Error(code=APP_REFUSED, reason=reason), reply_to=message)
            details = reason
        else:
            from medfed.client.site_daemon.deployed import app  # medfed's installed ClientApp, never the FAB's

            reply = app(message=message, context=context)
            status, details, code = SubStatus.COMPLETED, "", 0
        push_message(client, reply, context)
    except Exception:  # noqa: BLE001 (the SuperNode learns the task failed; the daemon goes on)
        log.exception("the site's ClientApp task failed")
    finally:
        push_task_output(client, context, status, details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one ClientApp task of a medfed site")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--site-config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API call otherwise
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(args.token)],
        retry_invoker=make_simple_http_retry_invoker())
    return run_task(client, args.site_config)


if __name__ == "__main__":
    sys.exit(main())
