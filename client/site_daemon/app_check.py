"""A site checks the Flower app (FAB) of a run before anything of the run is used.

The site runs only medfed's own installed code: the app the coordinator ships may name
medfed's components and carry settings, nothing else. A FAB is accepted only when

- it is a zip of exactly ``pyproject.toml``, Flower's ``.info/CONTENT`` manifest and, when
  signed, medfed's signature file: no code, no folder that could shadow a package;
- every file matches the manifest's SHA-256 and size (Flower's own integrity record);
- its components are exactly medfed's ServerApp and ClientApp, it asks to install
  nothing (``dependencies = []``) and its run config holds only medfed's keys;
- the run's config is the FAB's own: a run submitted with ``--run-config`` overrides
  (which Flower fuses into the config the app sees) is refused;
- it carries a valid signature by a key in the site's ``trusted-entities.yaml`` (required
  whenever the site has one, that is, always unless the site is an insecure trial).
"""

from __future__ import annotations

import hashlib
import io
import json
import tomllib
import zipfile
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medfed.app_signature import SIGNATURE_FILE, BadSignature, verify_app
from medfed.federation.flower_app import CLIENT_APP, CONFIG_KEY, OUTPUT_KEY, RESUME_KEY, SERVER_APP, SITES_KEY, WAIT_KEY

MANIFEST = ".info/CONTENT"
PYPROJECT = "pyproject.toml"
MAX_FAB_BYTES = 1024 * 1024  # medfed's app is a few kB of settings
RUN_CONFIG_KEYS = frozenset({CONFIG_KEY, OUTPUT_KEY, SITES_KEY, WAIT_KEY, RESUME_KEY})


class AppRefused(Exception):
    """The run's app is not medfed's own, unaltered and signed."""


@dataclass(frozen=True)
class CheckedApp:
    fab_sha256: str
    run_config_sha256: str
    signed_by: str | None


def run_config_digest(run_config: dict) -> str:
    return hashlib.sha256(json.dumps(dict(run_config), sort_keys=True, default=str).encode()).hexdigest()


def _members(fab: bytes) -> dict[str, bytes]:
    if len(fab) > MAX_FAB_BYTES:
        raise AppRefused(f"the app is {len(fab)} bytes; medfed's is a few kB (limit {MAX_FAB_BYTES})")
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            infos = archive.infolist()
            if sum(info.file_size for info in infos) > MAX_FAB_BYTES:
                raise AppRefused("the app unpacks to more than medfed's app ever holds")
            members = {info.filename: archive.read(info) for info in infos}
            if len(members) != len(infos):
                raise AppRefused("the app lists a file twice")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise AppRefused(f"the app is not a readable FAB ({exc})") from None
    allowed = {PYPROJECT, MANIFEST, SIGNATURE_FILE}
    extra = sorted(set(members) - allowed)
    if extra:
        raise AppRefused(f"the app holds files medfed's app never has: {', '.join(extra[:5])}"
                         f"{' ...' if len(extra) > 5 else ''} (a site runs only its installed medfed)")
    for required in (PYPROJECT, MANIFEST):
        if required not in members:
            raise AppRefused(f"the app has no {required}")
    return members


def _check_manifest(members: dict[str, bytes]) -> None:
    listed = {}
    for line in members[MANIFEST].decode(errors="replace").splitlines():
        path, _, rest = line.partition(",")
        digest, _, bits = rest.partition(",")
        listed[path] = (digest, bits)
    for path, content in members.items():
        if path == MANIFEST:
            continue
        if listed.get(path) != (hashlib.sha256(content).hexdigest(), str(len(content) * 8)):
            raise AppRefused(f"{path} does not match the app's manifest ({MANIFEST})")
    if set(listed) != set(members) - {MANIFEST}:
        raise AppRefused(f"the app's manifest lists files it does not hold: {sorted(set(listed) - set(members))}")


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_project(text: str, run_config: dict) -> None:
    try:
        project = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AppRefused(f"{PYPROJECT} is not valid TOML ({exc})") from None
    app = project.get("tool", {}).get("flwr", {}).get("app", {})
    components = app.get("components")
    if components != {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}:
        raise AppRefused(f"the app's components are {components}, not medfed's ({CLIENT_APP})")
    if project.get("project", {}).get("dependencies", []) != []:
        raise AppRefused("the app asks to install packages; medfed's app installs nothing")
    config = _flat(app.get("config", {}))
    unknown = sorted(set(config) - RUN_CONFIG_KEYS)
    if unknown:
        raise AppRefused(f"the app's run config has keys medfed does not use: {', '.join(unknown)}")
    if dict(run_config) != config:
        changed = sorted(k for k in set(run_config) | set(config) if run_config.get(k) != config.get(k))
        raise AppRefused(f"the run's config differs from the app's own (overridden: {', '.join(changed)})")


def check_app(fab: bytes, run_config: dict, trusted: dict[str, Ed25519PublicKey] | None) -> CheckedApp:
    """Check the FAB ``fab`` of a run whose fused run config is ``run_config``;
    `AppRefused` with the reason when it is not medfed's own, unaltered and signed."""
    members = _members(fab)
    _check_manifest(members)
    try:
        text = members[PYPROJECT].decode("utf-8")
    except UnicodeDecodeError:
        raise AppRefused(f"{PYPROJECT} is not UTF-8 text") from None
    _check_project(text, run_config)
    signed_by = None
    if trusted:
        if SIGNATURE_FILE not in members:
            raise AppRefused("the app is not signed; this site runs only apps signed by its trusted entities")
        try:
            signed_by = verify_app(text, members[SIGNATURE_FILE].decode(errors="replace"), trusted)
        except BadSignature as exc:
            raise AppRefused(f"bad signature: {exc}") from None
    return CheckedApp(hashlib.sha256(fab).hexdigest(), run_config_digest(run_config), signed_by)
