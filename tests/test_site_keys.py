"""Each hospital makes its own key (`medfed site keygen`); the coordinator's `medfed certs`
makes the federation's app-signing key and the sites' trusted-entities.yaml."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medfed.errors import MedfedError
from medfed.federation.credentials import (
    APP_SIGNING_KEY,
    TRUSTED_ENTITIES,
    create_credentials,
    key_id,
    load_app_signing_key,
    load_node_private_key,
    load_node_public_key,
    load_trusted_entities,
    ssh_fingerprint,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- medfed site keygen --------------------------------------------------------------------


def test_keygen_writes_a_key_pair_flower_reads(cli, capsys, tmp_path):
    out = tmp_path / "site" / "keys"
    code = cli("site", "keygen", "north", "--out", out)
    err = capsys.readouterr().err
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"north.key", "north.pub"}
    assert (_mode(out), _mode(out / "north.key"), _mode(out / "north.pub")) == (0o700, 0o600, 0o644)

    key = load_node_private_key(out / "north.key")  # as SITE.yaml's coordinator.private_key
    public = load_node_public_key(out / "north.pub")  # as the coordinator's --sites-keys
    assert key.curve.name == "secp384r1"
    assert public.public_numbers() == key.public_key().public_numbers()
    assert (out / "north.pub").read_text().count("\n") == 1

    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key

    registered = bytes_to_public_key(try_load_public_key(out / "north.pub"))  # flwr supernode register
    assert registered.public_numbers() == key.public_key().public_numbers()

    fingerprint = ssh_fingerprint(public)
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fingerprint)
    assert fingerprint in err
    assert "send to the coordinator" in err and str(out / "north.pub") in err
    assert "stays at the site" in err and str(out / "north.key") in err


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_fingerprint_is_the_one_ssh_keygen_shows(cli, tmp_path):
    assert cli("site", "keygen", "north", "--out", tmp_path) == 0
    shown = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "north.pub")], capture_output=True, text=True,
                           check=True).stdout.split()[1]
    assert shown == ssh_fingerprint(load_node_public_key(tmp_path / "north.pub"))


def test_keygen_key_is_private_whatever_the_umask(cli, tmp_path):
    old = os.umask(0)
    try:
        assert cli("site", "keygen", "north", "--out", tmp_path / "keys") == 0
    finally:
        os.umask(old)
    assert _mode(tmp_path / "keys" / "north.key") == 0o600


def test_keygen_refuses_to_overwrite(cli, capsys, tmp_path):
    assert cli("site", "keygen", "north", "--out", tmp_path) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert cli("site", "keygen", "north", "--out", tmp_path) == 2
    assert f"{tmp_path / 'north.key'} already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    (tmp_path / "north.key").unlink()  # a lone public key: still nothing is written
    assert cli("site", "keygen", "north", "--out", tmp_path) == 2
    assert f"{tmp_path / 'north.pub'} already exists" in capsys.readouterr().err
    assert not (tmp_path / "north.key").exists()


@pytest.mark.parametrize("name, message", [("../evil", "is not a usable site name"),
                                           ("server", "would clash with the coordinator's files")])
def test_keygen_bad_name(cli, capsys, tmp_path, name, message):
    assert cli("site", "keygen", name, "--out", tmp_path / "keys") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "keys").exists()


# ---- the app-signing key and trusted-entities.yaml -----------------------------------------


@pytest.fixture
def creds(tmp_path) -> Path:
    out = tmp_path / "creds"
    create_credentials(out, "fl.example.org", [])
    return out


def test_signing_key_and_trusted_entities_match(creds):
    assert _mode(creds / APP_SIGNING_KEY) == 0o600 and _mode(creds / TRUSTED_ENTITIES) == 0o644
    kid, key = load_app_signing_key(creds / APP_SIGNING_KEY)
    trusted = load_trusted_entities(creds / TRUSTED_ENTITIES)
    assert list(trusted) == [kid] == [key_id(key.public_key())]
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert kid == "medfed-" + hashlib.sha256(raw).hexdigest()[:16]
    assert re.search(rf"^{kid}: 'ssh-ed25519 [A-Za-z0-9+/=]+ medfed-app-signing'$",
                     (creds / TRUSTED_ENTITIES).read_text(), re.M)
    trusted[kid].verify(key.sign(b"a FAB digest"), b"a FAB digest")  # raises when they do not match


def test_flower_accepts_the_files_and_a_fab_signed_with_the_key(creds):
    """What flower-supernode --trusted-entities does with the file, on a FAB signed as Flower expects."""
    from flwr.supercore.fab import Fab
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign, load_private_key
    from flwr.supernode.cli.flower_supernode import _try_obtain_trusted_entities, _validate_public_keys_ed25519
    from flwr.supernode.start_client_internal import _verify_fab

    kid, key = load_app_signing_key(creds / APP_SIGNING_KEY)
    assert isinstance(load_private_key(creds / APP_SIGNING_KEY), Ed25519PrivateKey)
    entities = _try_obtain_trusted_entities(creds / TRUSTED_ENTITIES)
    _validate_public_keys_ed25519(entities)
    content, signed_at = b"fab bytes", int(time.time())
    signature = key.sign(create_message_to_sign(hashlib.sha256(content).digest(), signed_at))
    verification = json.dumps({"signature": base64.urlsafe_b64encode(signature).decode().rstrip("="),
                               "signed_at": signed_at})
    assert _verify_fab(Fab(hashlib.sha256(content).hexdigest(), content, {kid: verification}), entities)
    forged = Fab(hashlib.sha256(b"other").hexdigest(), b"other", {kid: verification})
    assert not _verify_fab(forged, entities)


def _ssh_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def test_load_app_signing_key_refuses_bad_files(creds, tmp_path):
    path = creds / APP_SIGNING_KEY
    path.chmod(0o640)
    with pytest.raises(MedfedError, match=f"chmod 600 {re.escape(str(path))}"):
        load_app_signing_key(path)
    bad = {"missing": None, "garbage": b"not a key\n", "ecdsa": _ssh_private(ec.generate_private_key(ec.SECP384R1()))}
    words = {"missing": "not found", "garbage": "not an unencrypted OpenSSH private key", "ecdsa": "must be Ed25519"}
    for name, data in bad.items():
        target = tmp_path / f"{name}.key"
        if data is not None:
            target.write_bytes(data)
            target.chmod(0o600)
        with pytest.raises(MedfedError, match=words[name]) as err:
            load_app_signing_key(target)
        assert str(target) in str(err.value)


EC_LINE = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize("text, words", [
    (None, "not found"),
    ("medfed-1: [unclosed\n", "not YAML"),
    ("", "not a mapping"),
    ("- ssh-ed25519 AAAA\n", "not a mapping"),
    ("medfed-1: 'ssh-ed25519 not-base64!'\n", "not an OpenSSH public key"),
    (f"medfed-1: '{EC_LINE}'\n", "Ed25519"),
    ("medfed-1: 42\n", "entry 'medfed-1'"),
])
def test_load_trusted_entities_refuses_bad_files(tmp_path, text, words):
    path = tmp_path / TRUSTED_ENTITIES
    if text is not None:
        path.write_text(text)
    with pytest.raises(MedfedError, match=re.escape(words)) as err:
        load_trusted_entities(path)
    assert str(path) in str(err.value)
