"""The coordinator's signature on medfed's Flower app, as both sides compute it.

``medfed server start`` signs the app it submits (its ``pyproject.toml``: the components
and the run config) with the federation's app-signing key; each site verifies it with the
public key in its ``trusted-entities.yaml`` before it runs anything of the run. Flower's own
``--trusted-entities`` check needs verifications that only Flower's hosted platform adds
to a FAB (``valid_license``), so an open-source SuperLink cannot serve them; medfed signs
the app's content instead and ships the signature inside the FAB as one JSON file.

``flwr build`` rewrites pyproject.toml (comments and layout change, values do not), so the
signature covers the parsed TOML as canonical JSON, not the file's bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import tomllib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_FILE = "medfed-signature.json"


class BadSignature(Exception):
    """The app carries no valid signature by a key the site trusts."""


def app_digest(pyproject_text: str) -> bytes:
    """SHA-256 of the app's pyproject.toml as canonical JSON."""
    canonical = json.dumps(tomllib.loads(pyproject_text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


def _message(digest: bytes, signed_at: str) -> bytes:
    return b"medfed-app-v1\0" + digest + b"\0" + signed_at.encode()


def sign_app(pyproject_text: str, key_id: str, key: Ed25519PrivateKey) -> str:
    """The JSON text of ``SIGNATURE_FILE`` for this app."""
    signed_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    signature = key.sign(_message(app_digest(pyproject_text), signed_at))
    return json.dumps({"key_id": key_id, "signed_at": signed_at,
                       "signature": base64.urlsafe_b64encode(signature).decode()}, indent=2) + "\n"


def verify_app(pyproject_text: str, signature_text: str, trusted: dict[str, Ed25519PublicKey]) -> str:
    """The id of the trusted key that signed this app; `BadSignature` otherwise."""
    try:
        record = json.loads(signature_text)
        key_id, signed_at = str(record["key_id"]), str(record["signed_at"])
        signature = base64.urlsafe_b64decode(str(record["signature"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BadSignature(f"{SIGNATURE_FILE} is malformed ({type(exc).__name__})") from None
    if key_id not in trusted:
        raise BadSignature(f"signed by key '{key_id}', which this site does not trust "
                           f"(coordinator.trusted_entities lists {', '.join(sorted(trusted)) or 'none'})")
    try:
        trusted[key_id].verify(signature, _message(app_digest(pyproject_text), signed_at))
    except InvalidSignature:
        raise BadSignature(f"the signature by '{key_id}' does not match the app's content") from None
    return key_id
