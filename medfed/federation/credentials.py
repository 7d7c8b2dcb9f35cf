"""Credentials for a federation on Flower's Deployment Engine: TLS, SuperNode keys, app signing.

The coordinator's SuperLink serves TLS with a certificate signed by the federation's own
CA; each hospital's SuperNode trusts that CA and proves who it is with its own key pair,
made at the site (``medfed site keygen``) so that its private half never travels. The
coordinator signs every run's Flower app (FAB) with the federation's app-signing key, and
each site accepts only apps signed by a key in its ``trusted-entities.yaml``.
What flwr 1.42 reads (``flwr/superlink/cli/flower_superlink.py``,
``flwr/supernode/cli/flower_supernode.py``, ``flwr/cli/supernode/register.py``):

- SuperLink: ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem
  --ssl-keyfile server.key --enable-supernode-auth`` (PEM files, served by its HTTPS API
  on ``--host``/``--port``, 8000 by default; node authentication refuses to start
  without TLS). The old ``--auth-list-public-keys`` CSV is refused; each site's public
  key is registered instead with ``flwr supernode register SITE.pub``, which reads it
  with ``load_ssh_public_key``: the OpenSSH line ``ecdsa-sha2-nistp384 AAAA...`` of a
  NIST curve.
- SuperNode: ``flower-supernode --superlink HOST:PORT --root-certificates ca.crt
  --auth-supernode-private-key SITE.key``, read with ``load_ssh_private_key(data, None)``:
  an unencrypted ``-----BEGIN OPENSSH PRIVATE KEY-----`` file holding an EC key (PKCS#8
  PEM is refused). ``--auth-supernode-public-key`` is deprecated: the public key is
  derived from the private one. A SuperNode whose key is not registered is turned away.
- ``trusted-entities.yaml``: a YAML mapping of key id to an OpenSSH ``ssh-ed25519`` public
  key line (the format of Flower's ``--trusted-entities``); a site runs a run only when its
  app carries a signature by one of these keys (`medfed.client.site_daemon.app_check`).

Node and TLS keys are ECDSA on SECP384R1; the app-signing key is Ed25519 (Flower verifies
apps with Ed25519 only). Private keys are created with mode 0600 by ``os.open``, so they
are never readable by others, not even for an instant.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfed.errors import MedfedError

CURVE = ec.SECP384R1
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
APP_SIGNING_KEY = "app-signing.key"
TRUSTED_ENTITIES = "trusted-entities.yaml"
APP_SIGNING_COMMENT = "medfed-app-signing"
RESERVED_NAMES = ("ca", "server", "app-signing")  # their .key files would clash with the coordinator's
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start a little early: clocks differ


@dataclass(frozen=True)
class Placement:
    """One file written by `create_credentials`: who receives it and what it is for."""

    file: Path
    goes_to: str
    used_as: str
    private: bool


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medfed federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(days: int, now: dt.datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The federation's CA: a key and its self-signed certificate (CA:TRUE, signs certificates only)."""
    start = (now or _now()) - _CLOCK_SKEW
    key = ec.generate_private_key(CURVE())
    name = _name("medfed federation CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, host: str, ips: list[str], days: int,
    now: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's TLS key and certificate, valid for ``host``, every IP in ``ips`` and loopback."""
    start = (now or _now()) - _CLOCK_SKEW
    key = ec.generate_private_key(CURVE())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(host, ips)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def subject_alt_names(host: str, ips: list[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses the coordinator answers on; loopback always, for local tests."""
    dns, addresses = [], []
    for value in (host, *LOOPBACK_NAMES):
        try:
            addresses.append(ipaddress.ip_address(value))  # --coordinator-host given as an IP
        except ValueError:
            dns.append(value)
    addresses += [ipaddress.ip_address(ip) for ip in (*ips, *LOOPBACK_IPS)]
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns)]
    return names + [x509.IPAddress(a) for a in dict.fromkeys(addresses)]


def node_key_files(key: ec.EllipticCurvePrivateKey, comment: str) -> tuple[bytes, bytes]:
    """A SuperNode's private key (OpenSSH format) and public key (one OpenSSH line)."""
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {comment}\n".encode()


def ssh_fingerprint(public_key) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it: two people can compare it by phone."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The app-signing key's id in ``trusted-entities.yaml``: derived from the key, so it is
    the same at the coordinator and at every site."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "medfed-" + hashlib.sha256(raw).hexdigest()[:16]


def app_signing_files(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """The app-signing key (OpenSSH private key) and the sites' ``trusted-entities.yaml``."""
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    trusted = ("# medfed federation: a site runs only apps signed by this key (coordinator.trusted_entities)\n"
               f"{key_id(key.public_key())}: '{public.decode()} {APP_SIGNING_COMMENT}'\n")
    return private, trusted.encode()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def check_site_names(sites: Sequence[str], option: str) -> list[str]:
    """Site names become file names (``SITE.key``, ``SITE.pub``), so they are kept plain;
    ``option`` (what the user typed them as) starts every message."""
    sites = list(sites)
    for site in sites:
        if not SITE_NAME.match(site):
            raise MedfedError(f"{option}: '{site}' is not a usable site name "
                              "(letters, digits, '-' and '_', starting with a letter or digit)")
        if site in RESERVED_NAMES:
            raise MedfedError(f"{option}: '{site}' would clash with the coordinator's files; pick another name")
    duplicates = sorted({s for s in sites if sites.count(s) > 1})
    if duplicates:
        raise MedfedError(f"{option}: {', '.join(duplicates)} listed twice")
    return sites


def parse_sites(text: str, option: str = "--trial-site-keys") -> list[str]:
    """``north,south,east`` as a list of checked site names."""
    sites = [s.strip() for s in text.split(",") if s.strip()]
    if not sites:
        raise MedfedError(f"{option}: give at least one site name, e.g. {option} north,south")
    return check_site_names(sites, option)


def _check_inputs(host: str, ips: list[str], days: int) -> None:
    if not host or any(c.isspace() for c in host):
        raise MedfedError(f"--coordinator-host: '{host}' is not a host name")
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise MedfedError(f"--coordinator-ip: '{ip}' is not an IP address") from None
    if days < 1:
        raise MedfedError(f"--days: must be at least 1, got {days}")


def create_credentials(out: Path, host: str, ips: list[str], days: int = 365,
                       trial_sites: Sequence[str] = ()) -> list[Placement]:
    """Write the CA, the coordinator's TLS files and the app-signing key into ``out``, plus a
    key pair per name in ``trial_sites`` (a trial on one machine: real sites make their own).

    Nothing is written when any of the files already exists; if writing fails halfway, the
    files written so far are removed, so a folder never holds half a set.
    """
    _check_inputs(host, ips, days)
    trial_sites = check_site_names(trial_sites, "--trial-site-keys")
    ca_key, ca_cert = make_ca(days)
    server_key, server_cert = make_server_cert(ca_key, ca_cert, host, ips, days)
    files = [
        (CA_CERT, _pem_cert(ca_cert), "coordinator and every site",
         "SuperLink --ssl-ca-certfile; SuperNode --root-certificates"),
        (CA_KEY, _pem_key(ca_key), "nobody: keep it offline", "signs a new server certificate; not needed to run"),
        (SERVER_CERT, _pem_cert(server_cert), "coordinator", "SuperLink --ssl-certfile"),
        (SERVER_KEY, _pem_key(server_key), "coordinator", "SuperLink --ssl-keyfile"),
    ]
    signing_key, trusted = app_signing_files(Ed25519PrivateKey.generate())
    files.append((APP_SIGNING_KEY, signing_key, "coordinator only", "signs every run's Flower app (FAB)"))
    files.append((TRUSTED_ENTITIES, trusted, "every site",
                  "coordinator.trusted_entities in SITE.yaml"))
    for site in trial_sites:
        private, public = node_key_files(ec.generate_private_key(CURVE()), site)
        files.append((f"{site}.key", private, f"site {site} only (trial on one machine)",
                      "SuperNode --auth-supernode-private-key"))
        files.append((f"{site}.pub", public, f"coordinator (and site {site})", f"flwr supernode register {site}.pub"))
    write_new_files(out, [(name, data) for name, data, _, _ in files])
    return [Placement(out / name, goes_to, used_as, name.endswith(".key")) for name, _, goes_to, used_as in files]


def write_new_files(out: Path, files: list[tuple[str, bytes]]) -> None:
    """Write ``files`` (name, content) into the folder ``out``, private keys (``*.key``) with
    mode 0600 and the rest 0644. Nothing is written when any of them already exists; if
    writing fails halfway, the files written so far are removed, so a folder never holds
    half a set."""
    if out.exists() and not out.is_dir():
        raise MedfedError(f"--out: {out} is a file; give a folder")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder is its owner's alone
    for name, _ in files:
        if (out / name).exists():
            raise MedfedError(f"{out / name} already exists; give --out a fresh folder "
                              "(existing credentials are never overwritten)")
    written: list[Path] = []
    try:
        for name, data in files:
            _write_new(out / name, data, 0o600 if name.endswith(".key") else 0o644)
            written.append(out / name)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: an existing file is an error)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise MedfedError(f"{path} already exists; existing credentials are never overwritten") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # exactly this mode, whatever the umask
        handle.write(data)


def _load_cert(path: Path, what: str) -> x509.Certificate:
    if not path.is_file():
        raise MedfedError(f"{what} not found: {path}")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise MedfedError(f"{path}: not a PEM certificate ({exc})") from exc


def _check_window(cert: x509.Certificate, path: Path, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise MedfedError(f"{path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                          "(is this machine's clock right?)")
    if now > cert.not_valid_after_utc:
        raise MedfedError(f"{path}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                          "ask the coordinator for new credentials")


def check_certificate(path: Path, ca_path: Path, now: dt.datetime | None = None) -> x509.Certificate:
    """The certificate at ``path``, once it is within its validity window and signed by the CA at
    ``ca_path`` (itself valid); otherwise a `MedfedError` naming the file at fault."""
    path, ca_path = Path(path), Path(ca_path)
    now = now or _now()
    ca = _load_cert(ca_path, "CA certificate")
    cert = _load_cert(path, "certificate")
    _check_window(ca, ca_path, now)
    _check_window(cert, path, now)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise MedfedError(f"{path}: not signed by the CA in {ca_path} (issued by '{cert.issuer.rfc4514_string()}'; "
                          "a certificate of another federation?)") from None
    return cert


def load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A SuperNode key as ``flower-supernode --auth-supernode-private-key`` reads it."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise MedfedError(f"{path}: not an unencrypted OpenSSH private key ({exc}); "
                          "flower-supernode --auth-supernode-private-key reads that format") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MedfedError(f"{path}: a {type(key).__name__}; SuperNode authentication needs an EC (ECDSA) key")
    return key


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A SuperNode's public key as ``flwr supernode register`` reads it (one OpenSSH line)."""
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MedfedError(f"{path}: not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise MedfedError(f"{path}: a {type(key).__name__}; SuperNode authentication needs an EC (ECDSA) key")
    return key


def load_app_signing_key(path: Path) -> tuple[str, Ed25519PrivateKey]:
    """The coordinator's app-signing key and its id, as ``trusted-entities.yaml`` names it;
    refused when other users can read it (whoever holds it can run code at every site)."""
    path = Path(path)
    if not path.is_file():
        raise MedfedError(f"app-signing key not found: {path}; create it with 'medfed certs'")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise MedfedError(f"{path} is readable by other users (mode {mode:04o}); run chmod 600 {path}")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except OSError as exc:
        raise MedfedError(f"{path}: cannot read the app-signing key ({exc.strerror})") from exc
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise MedfedError(f"{path}: not an unencrypted OpenSSH private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise MedfedError(f"{path}: a {type(key).__name__}; the app-signing key must be Ed25519")
    return key_id(key.public_key()), key


def load_trusted_entities(path: Path) -> dict[str, Ed25519PublicKey]:
    """``trusted-entities.yaml`` (the format of Flower's ``--trusted-entities``): key id ->
    the Ed25519 key whose signature on a run's app the site accepts."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MedfedError(f"trusted entities not found: {path}; copy the federation's {TRUSTED_ENTITIES} there")
    try:
        entries = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MedfedError(f"{path}: cannot read it ({exc.strerror})") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MedfedError(f"{path}: not YAML ({exc})") from exc
    if not isinstance(entries, dict) or not entries:
        raise MedfedError(f"{path}: not a mapping of key id to 'ssh-ed25519 ...' line (Flower's "
                          f"--trusted-entities format); use the federation's {TRUSTED_ENTITIES}")
    return {kid: _trusted_key(path, kid, line) for kid, line in entries.items()}


def _trusted_key(path: Path, kid, line) -> Ed25519PublicKey:
    if not isinstance(kid, str) or not isinstance(line, str):
        raise MedfedError(f"{path}: entry {kid!r}: give key id: 'ssh-ed25519 AAAA...' (both text)")
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MedfedError(f"{path}: entry '{kid}': not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise MedfedError(f"{path}: entry '{kid}': a {type(key).__name__}; Flower verifies apps with "
                          "Ed25519 keys only (ssh-ed25519)")
    return key


def is_loopback(host: str) -> bool:
    """``localhost`` or a literal 127.x / ::1 address. Nothing is resolved: a name other than
    localhost may point anywhere, so it never counts as loopback."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def print_placements(placements: list[Placement], console) -> None:
    """Which file goes where, as a table on ``console`` (a rich Console)."""
    from rich.table import Table

    table = Table(title=f"credentials in {placements[0].file.parent}" if placements else "credentials")
    table.add_column("file", no_wrap=True)  # a file name cut in two is hard to copy
    for column in ("goes to", "used as", "mode"):
        table.add_column(column, overflow="fold")
    for p in placements:
        table.add_row(p.file.name, p.goes_to, p.used_as, "0600 (private)" if p.private else "0644")
    console.print(table)
