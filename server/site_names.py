"""The coordinator names deployed sites by the key that authenticated them, not by what
they say about themselves.

``medfed server start`` registers each site's public key and learns its SuperNode's
node id; the deployed ServerApp gets that ``node id -> name`` table and labels every
reply by its sender: ``site-000`` is the first name in alphabetical order, and so on
(``sites.json`` in the run folder keeps the table). A node without a registered name
(a trial with ``--insecure``) is numbered after them in the order of its node id.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from medfed.errors import ConfigError
from medfed.strategies import SITE_KEY


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


class NamedSites(Grid):
    """A Grid that passes everything to Flower's, and labels each reply with the sender's
    index among the registered sites (the ``site`` metric the round loop reports by)."""

    def __init__(self, grid: Grid, names: dict[int, str]) -> None:
        self.grid = grid
        self.names = names
        self.order = sorted(names, key=lambda node: names[node])
        self.unnamed: list[int] = []

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

    def _label(self, reply: Message) -> Message:
        if not reply.has_error():
            for record in reply.content.metric_records.values():
                record[SITE_KEY] = self.index(reply.metadata.src_node_id)
        return reply

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self._label(reply) for reply in self.grid.send_and_receive(messages, timeout=timeout)]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._label(reply) for reply in self.grid.pull_messages(message_ids)]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run
