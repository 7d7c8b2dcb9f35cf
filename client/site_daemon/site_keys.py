"""A hospital's own SuperNode key pair, made at the hospital: ``medfed site keygen``.

The private key is what proves to the coordinator that a SuperNode is this site, so it is
made where it is used and never travels; only the public half goes to the coordinator,
which registers it (``flwr supernode register``). The files are those of
``medfed.federation.credentials.node_key_files``, the formats Flower reads, written with the
same guarantees as ``medfed certs`` (mode 0600 from the first byte, nothing overwritten).
The key's fingerprint lets the coordinator confirm, over another channel (a phone call),
that the public key it received is the one the site made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from medfed.federation.credentials import CURVE, check_site_names, node_key_files, ssh_fingerprint, write_new_files


@dataclass(frozen=True)
class SiteKeys:
    private: Path  # NAME.key: stays at the site
    public: Path  # NAME.pub: goes to the coordinator
    fingerprint: str  # SHA256:... as ssh-keygen -l prints it


def create_site_keys(name: str, out: Path) -> SiteKeys:
    """Write ``out/NAME.key`` (0600) and ``out/NAME.pub`` (0644); ``out`` is made 0700 if missing."""
    check_site_names([name], "NAME")
    key = ec.generate_private_key(CURVE())
    private, public = node_key_files(key, name)
    write_new_files(Path(out), [(f"{name}.key", private), (f"{name}.pub", public)])
    return SiteKeys(Path(out) / f"{name}.key", Path(out) / f"{name}.pub", ssh_fingerprint(key.public_key()))


def print_site_keys(keys: SiteKeys, console) -> None:
    """What to send, what to read out on the phone, what to keep; on ``console`` (rich). Lines
    are not wrapped, so paths and the fingerprint can be copied whole."""
    lines = [f"[bold green]created[/] the site's key pair in {keys.private.parent}",
             f"send to the coordinator: {keys.public} (only this file)",
             f"fingerprint: {keys.fingerprint} (confirm it with the coordinator by phone; "
             f"'ssh-keygen -lf {keys.public.name}' shows it there)",
             f"stays at the site: {keys.private} (mode 0600; coordinator.private_key in SITE.yaml); never send it"]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
