"""The coordinator names deployed sites by the key that authenticated them, not by what
they say about themselves.

``medfed server start`` registers each site's public key and learns its SuperNode's
node id; the deployed ServerApp gets that ``node id -> name`` table and labels every
reply by its sender: ``site-000`` is the first name in alphabetical order, and so on
(``sites.json`` in the run folder keeps the table). A node without a registered name
(a trial with ``--insecure``) is numbered after them in the order of its node id.

With a table (every deployment with TLS) only the registered sites take part: any
other node the SuperLink knows of (one registered behind the coordinator's back, say)
is never sent work, and a reply from it is dropped, so it can neither read the global
model nor be averaged into it. Each such node is logged and kept as an *intruder*
for the round's line in ``metrics.jsonl`` and for ``summary.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from medfed.errors import ConfigError, MedfedError
from medfed.strategies import SITE_KEY

NOT_REGISTERED = "not a registered site"
log = logging.getLogger("medfed.server")


class NotRegistered(MedfedError):
    """A message addressed to a node that is not a registered site."""


def parse_site_nodes(text: str) -> dict[int, str]:
    """``"123=north,456=south"`` (the run config's ``site-nodes``) as a table."""
    table: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, name = item.partition("=")
        if not sep or not node.strip().isdigit() or not name.strip():
            raise ConfigError(f"run config 'site-nodes': '{item}' is not NODE_ID=NAME")
        table[int(node)] = name.strip()
    return table


def format_site_nodes(table: dict[int, str]) -> str:
    return ",".join(f"{node}={name}" for node, name in table.items())


def intruders(rows: list[dict]) -> list[dict]:
    """Every intruder event of a run's rounds, for the summary."""
    return [{"round": row["round"], **event} for row in rows for event in row.get("intruders") or []]


class NamedSites(Grid):
    """A Grid that passes everything to Flower's, labels each reply with the sender's
    index among the registered sites (the ``site`` metric the round loop reports by) and,
    when there is a table, keeps every other node out of the run."""

    def __init__(self, grid: Grid, names: dict[int, str]) -> None:
        self.grid = grid
        self.names = names
        self.order = sorted(names, key=lambda node: names[node])
        self.unnamed: list[int] = []
        self.events: list[dict] = []  # intruder events not yet taken for a round's line
        self.reported: set[int] = set()  # intruders already reported as connected

    def index(self, node: int) -> int:
        if node in self.names:
            return self.order.index(node)
        if node not in self.unnamed:
            self.unnamed.append(node)
        return len(self.order) + self.unnamed.index(node)

    def table(self) -> dict[str, str]:
        """``site-NNN -> name`` for every site seen or registered."""
        named = {f"site-{i:03d}": self.names[node] for i, node in enumerate(self.order)}
        return named | {f"site-{self.index(n):03d}": f"unregistered node {n}" for n in self.unnamed}

    def intruder(self, node: int) -> bool:
        # without a table (the --insecure trial) no node is registered, and every node takes part
        return bool(self.names) and node not in self.names

    def _record(self, node: int, reason: str) -> None:
        log.warning("intruder: node %d is %s", node, reason)
        self.events.append({"node": node, "reason": reason})

    def take_intruders(self) -> list[dict]:
        """The intruder events since the last call (the round loop logs them per round)."""
        taken, self.events = self.events, []
        return taken

    def _label(self, reply: Message) -> Message:
        if not reply.has_error():
            for record in reply.content.metric_records.values():
                record[SITE_KEY] = self.index(reply.metadata.src_node_id)
        return reply

    def _heard(self, replies: Iterable[Message]) -> list[Message]:
        """The replies of registered sites, labelled; any other is dropped and recorded."""
        kept = []
        for reply in replies:
            if self.intruder(reply.metadata.src_node_id):
                self._record(reply.metadata.src_node_id, f"{NOT_REGISTERED}: its reply was dropped")
            else:
                kept.append(self._label(reply))
        return kept

    def _addressed(self, messages: Iterable[Message]) -> list[Message]:
        """``messages``, once each is known to go to a registered site.

        `get_node_ids` already hides other nodes; this stops a strategy that found a
        node id elsewhere."""
        messages = list(messages)
        for message in messages:
            self._refuse(message.metadata.dst_node_id)
        return messages

    def _refuse(self, node: int) -> None:
        if self.intruder(node):
            raise NotRegistered(f"refused to send a message to node {node}: {NOT_REGISTERED}")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._heard(self.grid.send_and_receive(self._addressed(messages), timeout=timeout))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._heard(self.grid.pull_messages(message_ids))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(self._addressed(messages))

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self.grid.get_node_ids())
        for node in nodes:
            if self.intruder(node) and node not in self.reported:
                self.reported.add(node)
                self._record(node, f"{NOT_REGISTERED}: connected, sent no work")
        return [node for node in nodes if not self.intruder(node)]

    def create_message(self, content, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        self._refuse(dst_node_id)
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run
