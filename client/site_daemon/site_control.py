"""The site's own controls around its ClientApp: a Flower mod that refuses and records.

Every message from the coordinator is checked for shape (`message_checks`) and against
the site's terms (`site_policy.accept_round`: policy, training limits, privacy promise)
before any model is built; every reply is checked to hold only the model's weights and
declared metrics before it leaves. The budget is the ClientApp's to check, just before
it trains: a round sent again after a coordinator restart is answered from the site's
round cache without spending anything, so it must not be refused here for a budget it
already paid. Both directions go to
the audit log. A refusal is an error reply, so the coordinator learns why and the
SuperNode carries on; nothing a message holds can crash the site's daemon. If the audit
log cannot be written, the site fails closed: no weights leave unrecorded.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message
from omegaconf import DictConfig

from medfed.client.site_daemon.audit_log import IN, OUT, AuditLog, round_of
from medfed.client.site_daemon.deployed_site import locate_deployed_site, site_config_from
from medfed.client.site_daemon.message_checks import (
    MalformedMessage,
    ReplyWithheld,
    check_incoming,
    check_reply,
    check_weights,
)
from medfed.client.site_policy import accept_round
from medfed.errors import MedfedError
from medfed.site_terms import RoundRefused
from medfed.wire import (
    AUDIT_FAILED,
    BUDGET_EXHAUSTED,
    MALFORMED_MESSAGE,
    POLICY_REFUSED,
    REPLY_WITHHELD,
    SITE_FAILED,
    SITE_MISCONFIGURED,
)

log = logging.getLogger("medfed.site")


class SiteControl:
    """The mod for one site, given its loaded SITE.yaml."""

    def __init__(self, cfg: DictConfig) -> None:
        self.name = cfg.name
        self.audit = AuditLog(cfg.audit_log, cfg.name)

    def __call__(self, msg: Message, ctxt: Context, call_next) -> Message:
        rnd = round_of(msg)
        try:
            spec = check_incoming(msg)
            site = locate_deployed_site(ctxt.node_config)  # its terms, and its training items for delta
            accept_round(site.terms, msg.content.config_records["config"], len(site.train))
            check_weights(msg, spec)
        except MalformedMessage as exc:
            return self._refuse(msg, rnd, MALFORMED_MESSAGE, f"malformed message: {exc}")
        except RoundRefused as exc:
            return self._refuse(msg, rnd, exc.code, f"refused by the site's policy: {exc}")
        except MedfedError as exc:  # the site's own data cannot be read: say so, not where it lies
            log.error("%s cannot read its data: %s", self.name, exc)
            return self._refuse(msg, rnd, SITE_MISCONFIGURED, f"the site's data cannot be read ({type(exc).__name__})")
        except Exception as exc:  # whatever a hostile round's values trip the checks on: refuse it
            log.exception("%s cannot check the round's settings", self.name)
            return self._refuse(msg, rnd, MALFORMED_MESSAGE,
                                f"malformed message: the round's settings cannot be checked ({type(exc).__name__})")
        if not self._record(msg, IN, "accepted", None, rnd):
            return self._error(msg, AUDIT_FAILED, "the site's audit log cannot be written")
        reply, status = self._run(msg, ctxt, call_next), "sent"
        if reply.has_error():
            status = "refused" if reply.error.code in (BUDGET_EXHAUSTED, POLICY_REFUSED) else "error"
        else:
            try:
                check_reply(msg, reply)
            except ReplyWithheld as exc:
                log.error("%s withholds its reply to round %s: %s", self.name, rnd, exc)
                reply, status = self._error(msg, REPLY_WITHHELD, f"reply withheld: {exc}"), "withheld"
        if not self._record(reply, OUT, status, reply.error.reason if reply.has_error() else None, rnd):
            return self._error(msg, AUDIT_FAILED, "the site's audit log cannot be written")
        return reply

    def _run(self, msg: Message, ctxt: Context, call_next) -> Message:
        try:
            return call_next(msg, ctxt)
        except Exception as exc:  # the daemon and the coordinator get an error reply, not a crash
            log.exception("%s: the ClientApp failed on round %s", self.name, round_of(msg))
            return self._error(msg, SITE_FAILED, f"local {msg.metadata.message_type} failed ({type(exc).__name__})")

    def _refuse(self, msg: Message, rnd: int | None, code: int, reason: str) -> Message:
        log.warning("%s refuses a %s message of run %s: %s", self.name, msg.metadata.message_type,
                    msg.metadata.run_id, reason)
        self._record(msg, IN, "refused", reason, rnd)
        reply = self._error(msg, code, reason)
        self._record(reply, OUT, "refused", reason, rnd)
        return reply

    def _error(self, msg: Message, code: int, reason: str) -> Message:
        return Message(Error(code=code, reason=f"{self.name}: {reason}"), reply_to=msg)

    def _record(self, msg: Message, direction: str, status: str, reason: str | None, rnd: int | None) -> bool:
        try:
            self.audit.record(msg, direction, status, reason, rnd)
            return True
        except OSError as exc:
            log.error("%s: cannot write the audit log %s: %s", self.name, self.audit.path, exc)
            return False


def site_control_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """The mod of a deployed ClientApp: the site's controls, from its SuperNode's SITE.yaml."""
    try:
        cfg = site_config_from(ctxt.node_config)
    except MedfedError as exc:
        log.error("the site cannot read its settings: %s", exc)
        return Message(Error(code=SITE_MISCONFIGURED, reason=f"site misconfigured: {exc}"), reply_to=msg)
    return SiteControl(cfg)(msg, ctxt, call_next)
