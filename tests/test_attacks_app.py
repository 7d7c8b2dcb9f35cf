"""Attacks on a site through the run's Flower app (FAB), each refused before anything runs.

The FABs are built with Flower's own builder (what ``flwr run`` submits) or by hand, and
checked by the site's `check_app` and `admit` exactly as its app process does.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from deployment_helpers import site_yaml, substitute_app
from flwr.cli.build import build_fab_from_disk
from flwr.common.config import flatten_dict, get_fab_config

from medfed.app_signature import SIGNATURE_FILE, sign_app
from medfed.client.site_daemon.app_check import AppRefused, check_app
from medfed.client.site_daemon.app_process import admit
from medfed.client.site_daemon.audit_log import read_audit_log, verify_audit_log
from medfed.federation.credentials import (
    APP_SIGNING_KEY,
    TRUSTED_ENTITIES,
    create_credentials,
    load_app_signing_key,
    load_trusted_entities,
)
from medfed.federation.flower_app import write_app

EVIL_CLIENT = """\
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("evil code ran")  # proof of execution
from flwr.clientapp import ClientApp
app = ClientApp()
"""


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two federations' credentials: ours, and another one's signing key."""
    root = tmp_path_factory.mktemp("creds")
    create_credentials(root / "ours", "localhost", [], trial_sites=["north"])
    create_credentials(root / "theirs", "localhost", [])
    return root


def _signed_app(folder: Path, creds: Path, *, sign: bool = True, experiment: str = "name: trial\n") -> Path:
    pyproject = write_app(folder, "trial", experiment, folder / "out", "1=north", 10.0, False)
    if sign:
        (folder / SIGNATURE_FILE).write_text(sign_app(pyproject.read_text(), *load_app_signing_key(creds / APP_SIGNING_KEY)))
    return folder


def _run_config(fab: bytes) -> dict:
    """The run config a site sees for a run of ``fab`` without overrides (Flower's fusing)."""
    return flatten_dict(get_fab_config(fab)["tool"]["flwr"]["app"].get("config", {}))


def _trusted(federation: Path) -> dict:
    return load_trusted_entities(federation / "ours" / TRUSTED_ENTITIES)


def test_medfeds_own_signed_app_is_accepted(tmp_path, federation):
    fab = build_fab_from_disk(_signed_app(tmp_path / "app", federation / "ours"))
    checked = check_app(fab, _run_config(fab), _trusted(federation))
    assert checked.signed_by == next(iter(_trusted(federation)))
    assert len(checked.fab_sha256) == 64


@pytest.mark.parametrize("components, files, reason", [
    (("evil.server:app", "evil.client:app"), {"evil/__init__.py": "", "evil/client.py": EVIL_CLIENT},
     "holds files medfed's app never has"),
    # medfed's own component names, with a medfed/ folder that would shadow the installed package
    (("medfed.server.deployed:app", "medfed.client.site_daemon.deployed:app"),
     {"medfed/__init__.py": "", "medfed/client/__init__.py": "", "medfed/client/site_daemon/__init__.py": "",
      "medfed/client/site_daemon/deployed.py": EVIL_CLIENT},
     "holds files medfed's app never has"),
    (("evil.server:app", "evil.client:app"), {}, "components"),
])
def test_a_substitute_app_is_refused_and_never_imported(tmp_path, federation, components, files, reason):
    app = substitute_app(tmp_path / "evil", files, components)
    fab = build_fab_from_disk(app)
    with pytest.raises(AppRefused, match=reason):
        check_app(fab, _run_config(fab), _trusted(federation))
    assert not list(tmp_path.rglob("IMPORTED"))


def _rezip(fab: bytes, change) -> bytes:
    """A hand-made FAB: ``fab``'s files passed through ``change(name, data) -> data | None``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info.filename, data)
    return out.getvalue()


def test_edits_to_a_signed_app_are_refused(tmp_path, federation):
    fab = build_fab_from_disk(_signed_app(tmp_path / "app", federation / "ours", experiment="name: trial\n"))
    config, trusted = _run_config(fab), _trusted(federation)

    # the run config edited inside the FAB: the manifest no longer matches
    edited = _rezip(fab, lambda n, d: d.replace(b"name: trial", b"name: other") if n == "pyproject.toml" else d)
    with pytest.raises(AppRefused, match="does not match the app's manifest"):
        check_app(edited, config, trusted)

    # the same edit with the manifest rebuilt, as an attacker would: the signature no longer matches
    app = _signed_app(tmp_path / "app2", federation / "ours", experiment="name: trial\n")
    signature = (app / SIGNATURE_FILE).read_text()
    _signed_app(app, federation / "ours", sign=False, experiment="name: other\n")
    (app / SIGNATURE_FILE).write_text(signature)
    rebuilt = build_fab_from_disk(app)
    with pytest.raises(AppRefused, match="does not match the app's content"):
        check_app(rebuilt, _run_config(rebuilt), trusted)

    # unsigned, or signed by another federation's key
    unsigned = build_fab_from_disk(_signed_app(tmp_path / "app3", federation / "ours", sign=False))
    with pytest.raises(AppRefused, match="not signed"):
        check_app(unsigned, _run_config(unsigned), trusted)
    foreign = build_fab_from_disk(_signed_app(tmp_path / "app4", federation / "theirs"))
    with pytest.raises(AppRefused, match="does not trust"):
        check_app(foreign, _run_config(foreign), trusted)

    # medfed's signed app with the run's config overridden (flwr run --run-config ...)
    with pytest.raises(AppRefused, match="differs from the app's own"):
        check_app(fab, config | {"resume": True}, trusted)

    # not a FAB at all, and an extra file slipped in beside a valid signature
    with pytest.raises(AppRefused, match="not a readable FAB"):
        check_app(b"PK\x03\x04 not really", config, trusted)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("sitecustomize.py", "import os")
    with pytest.raises(AppRefused, match="sitecustomize.py"):
        check_app(out.getvalue(), config, trusted)


def test_an_app_that_asks_to_install_packages_is_refused(tmp_path, federation):
    app = _signed_app(tmp_path / "app", federation / "ours", sign=False)
    text = (app / "pyproject.toml").read_text().replace("dependencies = []", 'dependencies = ["evil-package"]')
    (app / "pyproject.toml").write_text(text)
    (app / SIGNATURE_FILE).write_text(sign_app(text, *load_app_signing_key(federation / "ours" / APP_SIGNING_KEY)))
    fab = build_fab_from_disk(app)
    with pytest.raises(AppRefused, match="install packages"):
        check_app(fab, _run_config(fab), _trusted(federation))


def test_the_site_records_every_verdict_in_its_audit_log(tmp_path, federation):
    creds = federation / "ours"
    site = site_yaml(tmp_path / "north", creds, "north")
    node_config = {"site-config": str(site)}
    good = build_fab_from_disk(_signed_app(tmp_path / "app", creds))
    evil = build_fab_from_disk(substitute_app(tmp_path / "evil", {"evil/client.py": EVIL_CLIENT}))

    def task(fab: bytes, override: dict | None = None):
        message = SimpleNamespace(metadata=SimpleNamespace(run_id=77, message_id="m1"))
        context = SimpleNamespace(run_config=_run_config(fab) | (override or {}), node_config=node_config)
        run = SimpleNamespace(override_config=override or {})
        return message, context, run, SimpleNamespace(content=fab, hash_str=f"hash-{len(fab)}")

    checked, reason = admit(*task(good), str(site))
    assert checked is not None and reason is None
    checked, reason = admit(*task(evil), str(site))
    assert checked is None and "app refused" in reason
    checked, reason = admit(*task(good, {"output-dir": "/elsewhere"}), str(site))
    assert checked is None and "overrides" in reason

    log = tmp_path / "north" / "state" / "audit.log"
    entries = read_audit_log(log)
    assert [(e["kind"], e["status"]) for e in entries] == [("app", "accepted"), ("app", "refused"), ("app", "refused")]
    assert entries[1]["fab_sha256"] == f"hash-{len(evil)}" and entries[1]["run_id"] == 77
    assert all(len(e["run_config_sha256"]) == 64 for e in entries)
    assert verify_audit_log(log) == 3
    assert json.loads(log.read_text().splitlines()[0])["signed_by"].startswith("medfed-")
