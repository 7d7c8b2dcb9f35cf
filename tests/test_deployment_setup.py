"""Joining a federation: credentials, the site's SITE.yaml and its data check."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import pneumonia_or_skip
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from PIL import Image

from medfed.errors import MedfedError
from medfed.federation import credentials
from medfed.federation.credentials import check_certificate, create_credentials

PHI_VALUES = ("CompressedSamples", "1CT1", "JFK IMAGING", "ABCD1234")


@pytest.fixture
def creds(tmp_path) -> Path:
    out = tmp_path / "creds"
    create_credentials(out, "fl.example.org", [], trial_sites=["north"])
    return out


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _site_yaml(folder: Path, creds: Path, data: str, extra: str = "") -> Path:
    return _write_yaml(folder / "SITE.yaml", f"""\
name: north
data: {data}
state_dir: state
coordinator:
  address: fl.example.org:8000
  ca_cert: {creds / 'ca.crt'}
  private_key: {creds / 'north.key'}
  public_key: {creds / 'north.pub'}
  trusted_entities: {creds / 'trusted-entities.yaml'}
{extra}""")


# ---- credentials ---------------------------------------------------------------------------


COORDINATOR_FILES = {"ca.crt", "ca.key", "server.pem", "server.key", "app-signing.key", "trusted-entities.yaml"}


def test_certs_creates_a_ca_a_server_certificate_and_the_app_signing_key(cli, capsys, tmp_path):
    out = tmp_path / "creds"
    code = cli("certs", "--out", out, "--coordinator-host", "fl.example.org", "--coordinator-ip", "10.0.0.5")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 0, err
    names = COORDINATOR_FILES
    assert {p.name for p in out.iterdir()} == names  # no site's private key: sites make their own
    assert {p.name for p in out.glob("*.key")} == {"ca.key", "server.key", "app-signing.key"}
    for name in ("server.pem", "ca.crt", "app-signing.key", "trusted-entities.yaml", "medfed site keygen"):
        assert name in err

    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    check_certificate(out / "server.pem", out / "ca.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.0.0.5"),
                                                           ipaddress.ip_address("127.0.0.1")}
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in names:
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), (name, oct(mode))


def test_trial_site_keys_are_written_only_when_asked_for(cli, capsys, tmp_path):
    out = tmp_path / "creds"
    assert cli("certs", "--out", out, "--coordinator-host", "localhost", "--trial-site-keys", "north,south") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert {p.name for p in out.iterdir()} == COORDINATOR_FILES | {"north.key", "north.pub", "south.key", "south.pub"}
    assert "trial on one machine" in err and "medfed site keygen" in err
    for name in ("north.key", "south.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600


def test_site_keys_are_what_flower_reads(creds):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key

    key = load_ssh_private_key((creds / "north.key").read_bytes(), None)  # as flower-supernode does
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert (creds / "north.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    registered = bytes_to_public_key(try_load_public_key(creds / "north.pub"))  # flwr supernode register
    assert registered.public_numbers() == key.public_key().public_numbers()


def test_private_keys_stay_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        placements = create_credentials(tmp_path / "c", "fl.example.org", [], trial_sites=["north"])
    finally:
        os.umask(old)
    for p in placements:
        assert stat.S_IMODE(p.file.stat().st_mode) == (0o600 if p.private else 0o644), p.file


def test_certs_refuse_to_overwrite(cli, capsys, creds):
    before = {p.name: p.read_bytes() for p in creds.iterdir()}
    code = cli("certs", "--out", creds, "--coordinator-host", "other.example.org")
    err = capsys.readouterr().err
    assert code == 2
    assert f"{creds / 'ca.crt'} already exists" in err
    assert {p.name: p.read_bytes() for p in creds.iterdir()} == before


@pytest.mark.parametrize("args, message", [
    (["--trial-site-keys", "north,north"], "north listed twice"),
    (["--trial-site-keys", "../evil"], "'../evil' is not a usable site name"),
    (["--trial-site-keys", "app-signing"], "would clash with the coordinator's files"),
    (["--coordinator-ip", "not-an-ip"], "--coordinator-ip: 'not-an-ip'"),
    (["--days", "0"], "--days"),
])
def test_certs_bad_arguments(cli, capsys, tmp_path, args, message):
    code = cli("certs", "--out", tmp_path / "c", "--coordinator-host", "fl.example.org", *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c" / "ca.crt").exists()


def _write_cert(path: Path, cert) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("issued_days_from_now, words", [(-400, "expired on"), (10, "not valid before")])
def test_check_certificate_rejects_a_certificate_outside_its_validity(creds, tmp_path, issued_days_from_now, words):
    ca_key = serialization.load_pem_private_key((creds / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((creds / "ca.crt").read_bytes())
    issued = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=issued_days_from_now)
    _, cert = credentials.make_server_cert(ca_key, ca, "fl.example.org", [], days=30, now=issued)
    path = _write_cert(tmp_path / "server.pem", cert)
    with pytest.raises(MedfedError, match=words) as err:
        check_certificate(path, creds / "ca.crt")
    assert str(path) in str(err.value)


def test_check_certificate_rejects_a_foreign_certificate(creds, tmp_path):
    other_key, other_ca = credentials.make_ca(days=30)
    _, foreign = credentials.make_server_cert(other_key, other_ca, "fl.example.org", [], days=30)
    path = _write_cert(tmp_path / "foreign.pem", foreign)
    with pytest.raises(MedfedError, match="not signed by the CA") as err:
        check_certificate(path, creds / "ca.crt")
    assert str(path) in str(err.value) and str(creds / "ca.crt") in str(err.value)


# ---- SITE.yaml -----------------------------------------------------------------------------


@pytest.fixture
def small_npz(tmp_path) -> Path:
    source = np.load(pneumonia_or_skip())
    path = tmp_path / "north.npz"
    np.savez(path, train_images=source["train_images"][:60], train_labels=source["train_labels"][:60],
             val_images=source["val_images"][:20], val_labels=source["val_labels"][:20])
    return path


def _expect_config_error(cli, capsys, yaml: Path, *messages: str) -> None:
    code = cli("site", "check", yaml)
    err = capsys.readouterr().err
    assert code == 2
    for message in messages:
        assert message in err, err
    assert "Traceback" not in err


def test_unknown_setting(cli, capsys, tmp_path, creds):
    yaml = _site_yaml(tmp_path, creds, "{format: npz, path: x.npz, formt: 1}")
    _expect_config_error(cli, capsys, yaml, str(yaml), "unknown setting 'data.formt'")


def test_missing_data_folder(cli, capsys, tmp_path, creds):
    yaml = _site_yaml(tmp_path, creds, "{format: masks, path: images_here}")
    _expect_config_error(cli, capsys, yaml, "'data.path'", f"folder not found: {tmp_path / 'images_here'}")


def test_unknown_format(cli, capsys, tmp_path, creds):
    yaml = _site_yaml(tmp_path, creds, "{format: jpeg, path: .}")
    _expect_config_error(cli, capsys, yaml, "'data.format'", "'jpeg' is not one of npz, folder, drive, masks")


@pytest.mark.parametrize("address", ["fl.example.org", "fl.example.org:99999", "http://fl:9092"])
def test_bad_address(cli, capsys, tmp_path, creds, small_npz, address):
    yaml = _site_yaml(tmp_path, creds, f"{{format: npz, path: {small_npz}}}")
    yaml.write_text(yaml.read_text().replace("fl.example.org:8000", address))
    _expect_config_error(cli, capsys, yaml, "'coordinator.address'", address)


def test_missing_or_exposed_private_key(cli, capsys, tmp_path, creds, small_npz):
    yaml = _site_yaml(tmp_path, creds, f"{{format: npz, path: {small_npz}}}")
    (creds / "north.key").chmod(0o644)
    _expect_config_error(cli, capsys, yaml, "'coordinator.private_key'", "chmod 600")
    (creds / "north.key").unlink()
    _expect_config_error(cli, capsys, yaml, "'coordinator.private_key'", f"file not found: {creds / 'north.key'}")


def test_public_key_of_another_site(cli, capsys, tmp_path, creds, small_npz):
    create_credentials(tmp_path / "other", "fl.example.org", [], trial_sites=["south"])
    yaml = _site_yaml(tmp_path, creds, f"{{format: npz, path: {small_npz}}}")
    yaml.write_text(yaml.read_text().replace(str(creds / "north.pub"), str(tmp_path / "other" / "south.pub")))
    _expect_config_error(cli, capsys, yaml, "'coordinator.public_key'", "not the public half")


@pytest.fixture
def synthetic_npz(tmp_path) -> Path:
    from deployment_helpers import site_npz

    return site_npz(tmp_path / "north.npz")


@pytest.mark.parametrize("content, words", [
    (None, "trusted entities not found"),
    ("medfed-1: [unclosed\n", "not YAML"),
    ("just text\n", "not a mapping"),
    ("medfed-1: 'ecdsa-sha2-nistp384 {ec}'\n", "Ed25519"),
])
def test_bad_trusted_entities(cli, capsys, tmp_path, creds, synthetic_npz, content, words):
    yaml = _site_yaml(tmp_path, creds, "{format: npz, path: north.npz}")
    trusted = tmp_path / "trusted.yaml"
    if content is not None:
        ec_blob = (creds / "north.pub").read_text().split()[1]
        trusted.write_text(content.replace("{ec}", ec_blob))
    yaml.write_text(yaml.read_text().replace(str(creds / "trusted-entities.yaml"), "trusted.yaml"))
    _expect_config_error(cli, capsys, yaml, "'coordinator.trusted_entities'", str(trusted), words)


def test_trusted_entities_required_unless_insecure(cli, capsys, tmp_path, creds, synthetic_npz):
    yaml = _site_yaml(tmp_path, creds, "{format: npz, path: north.npz}")
    yaml.write_text("".join(line for line in yaml.read_text().splitlines(True) if "trusted_entities" not in line))
    _expect_config_error(cli, capsys, yaml, "'coordinator.trusted_entities'", "required unless insecure: true")


def test_site_key_made_at_the_site_and_readable_by_its_group(cli, capsys, tmp_path, creds, synthetic_npz):
    keys = tmp_path / "keys"
    assert cli("site", "keygen", "north", "--out", keys) == 0
    yaml = _site_yaml(tmp_path, creds, "{format: npz, path: north.npz}")
    yaml.write_text(yaml.read_text().replace(str(creds / "north."), str(keys / "north.")))
    assert cli("site", "check", yaml) == 0, capsys.readouterr().err
    (keys / "north.key").chmod(0o640)
    _expect_config_error(cli, capsys, yaml, "'coordinator.private_key'", f"{keys / 'north.key'} is readable by other",
                         f"chmod 600 {keys / 'north.key'}")


@pytest.mark.parametrize("address, ok", [
    ("fl.example.org:8000", False), ("10.0.0.5:8000", False), ("localhost.example.org:8000", False),
    ("127.0.0.1:8000", True), ("127.0.1.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True),
])
def test_insecure_only_with_a_coordinator_on_loopback(cli, capsys, tmp_path, synthetic_npz, address, ok):
    yaml = _write_yaml(tmp_path / "SITE.yaml", f"""\
name: north
data: {{format: npz, path: north.npz}}
insecure: true
coordinator: {{address: '{address}'}}
""")
    if ok:
        assert cli("site", "check", yaml) == 0, capsys.readouterr().err
    else:
        _expect_config_error(cli, capsys, yaml, "'insecure'", address)


def test_insecure_server_only_on_loopback(cli, capsys, tmp_path):
    config = _write_yaml(tmp_path / "exp.yaml", f"name: t\ndata: {{root: {tmp_path / 'no-data'}}}\n")
    state, out = tmp_path / "state", tmp_path / "run"
    code = cli("server", "start", config, "--insecure", "--host", "0.0.0.0", "--state", state, "--output", out)
    err = capsys.readouterr().err
    assert code == 2
    assert "--insecure: --host 0.0.0.0 is not a loopback address" in err
    assert not state.exists() and not out.exists()  # refused before anything was read, written or started


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False), ("fl.example.org", False),
    ("localhost.example.org", False),
])
def test_check_insecure_host(host, ok):
    from medfed.server.coordinator.start import check_insecure_host

    if ok:
        check_insecure_host(host)
    else:
        with pytest.raises(MedfedError, match="not a loopback address"):
            check_insecure_host(host)


# ---- site check ----------------------------------------------------------------------------


def test_site_check_on_npz(cli, capsys, tmp_path, creds, small_npz):
    yaml = _site_yaml(tmp_path, creds, "{format: npz, path: north.npz}")  # relative to SITE.yaml
    code = cli("site", "check", yaml)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "60 train, 20 validation" in err
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    assert report["ok"] and report["counts"] == {"train": 60, "val": 20}
    assert sum(report["labels"].values()) == 80
    assert report["sizes"]["most_common"] == "28x28"
    assert report["unreadable"] == [] and report["phi"] is None


def test_site_check_keeps_going_past_bad_images(cli, capsys, tmp_path, creds):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a picture")
    rows = "".join(f"{i}.png,{i % 2}\n" for i in range(4)) + "broken.png,0\nmissing.png,1\n"
    (images / "labels.csv").write_text("image,label\n" + rows)
    yaml = _site_yaml(tmp_path, creds, "{format: folder, path: images}")
    out = tmp_path / "check.json"
    assert cli("site", "check", yaml, "--output", out) == 2
    report = json.loads(out.read_text())
    assert {Path(r["file"]).name for r in report["unreadable"]} == {"broken.png", "missing.png"}
    assert report["labels"] == {"0": 2, "1": 2} and report["files"] == 6
    assert not report["ok"]


def test_site_check_on_a_mask_folder(cli, capsys, tmp_path, creds):
    root = tmp_path / "seg"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(4):
        mask = np.zeros((16, 16), np.uint8)
        mask[:4, :8] = 255  # an eighth of each picture is foreground
        Image.fromarray(np.full((16, 16), 30 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    yaml = _site_yaml(tmp_path, creds, "{format: masks, path: seg, masks: masks, fov: null}",
                      extra="policy: {tasks: [segmentation], models: [unet]}\n")
    code = cli("site", "check", yaml)
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    assert report["mask_classes"] == {"0": 0.875, "1": 0.125}
    assert report["counts"] == {"train": 3, "val": 1}


@pytest.mark.parametrize("strict", [False, True])
def test_site_check_lists_images_without_a_mask(cli, capsys, tmp_path, creds, strict):
    root = tmp_path / "seg"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((16, 16), 30 * i, np.uint8)).save(root / "images" / f"{i:02d}_scan.ppm")
        if i != 3:
            mask = np.zeros((16, 16), np.uint8)
            mask[:4, :8] = 255
            Image.fromarray(mask).save(root / "masks" / f"{i:02d}_scan_label.png")
    data = f"{{format: masks, path: seg, masks: masks, fov: null, strict: {str(strict).lower()}}}"
    yaml = _site_yaml(tmp_path, creds, data, extra="policy: {tasks: [segmentation], models: [unet]}\n")
    code = cli("site", "check", yaml)
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    listed = report["unreadable"] if strict else report["skipped"]
    assert [Path(r["file"]).name for r in listed] == ["03_scan.ppm"]
    assert "no mask" in listed[0]["reason"]
    if strict:
        assert code == 2 and not report["ok"]
    else:
        assert code == 0, err
        assert report["ok"] and report["counts"] == {"train": 3, "val": 1}
        assert "left out of training" in err and "images/03_scan.ppm" in err


def test_site_check_reports_the_estimated_field_of_view(cli, capsys, tmp_path, creds):
    from test_hospital_layouts import _fundus

    root = tmp_path / "fundus"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    picture, disc = _fundus()
    for i in range(4):
        Image.fromarray(picture).save(root / "images" / f"{i}.ppm")
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
    yaml = _site_yaml(tmp_path, creds, "{format: masks, path: fundus, masks: masks, fov: null}",
                      extra="policy: {tasks: [segmentation], models: [unet]}\n")
    assert cli("site", "check", yaml) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "state" / "site-check.json").read_text())["fov_estimated"] == 4
    assert "estimated for 4 fundus photographs" in capsys.readouterr().err


def test_a_site_checks_its_images_before_they_are_labelled_but_does_not_start(cli, capsys, tmp_path, creds):
    from test_hospital_layouts import _fundus

    (tmp_path / "fundus" / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_fundus()[0]).save(tmp_path / "fundus" / "images" / f"{i}.JPG")
    yaml = _site_yaml(tmp_path, creds, "{format: masks, path: fundus, masks: null, fov: null}",
                      extra="policy: {tasks: [segmentation], models: [unet]}\n")
    assert cli("site", "check", yaml) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    assert report["ok"] and not report["labelled"] and report["counts"] is None
    assert report["files"] == 3 and report["sizes"]["most_common"] == "60x80" and report["fov_estimated"] == 3
    assert "not labelled yet" in capsys.readouterr().err
    assert cli("site", "start", yaml) == 2
    assert "data.masks is null: the site's images are not labelled yet" in capsys.readouterr().err


def test_an_unlabelled_dicom_series_is_still_scanned_for_identifying_headers(cli, capsys, tmp_path, creds):
    _dicom_series(tmp_path / "ct" / "images", 3)
    yaml = _site_yaml(tmp_path, creds, "{format: dicom, path: ct, masks: null}",
                      extra="policy: {tasks: [segmentation]}\n")
    assert cli("site", "check", yaml) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    assert report["phi"]["verdict"] == "identifying" and report["phi"]["files"] == 3 and not report["labelled"]


def test_only_image_formats_may_leave_their_masks_out(cli, capsys, tmp_path, creds, small_npz):
    yaml = _site_yaml(tmp_path, creds, f"{{format: npz, path: {small_npz}, masks: null}}")
    _expect_config_error(cli, capsys, yaml, "'data.masks'", "not labelled yet")


def _dicom_series(folder: Path, n: int, gap: float = 5.0) -> None:
    """``n`` slices of pydicom's CT_small.dcm (which carries a patient name, ID and institution),
    one after another along the slice axis."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True)
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for z in range(n):
        ds = source.copy()
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], -75.0 + gap * z]
        ds.SOPInstanceUID = f"{source.SOPInstanceUID}.{z}"
        ds.save_as(folder / f"slice{z}.dcm")


def _deidentified(folder: Path, mark: bool = True) -> None:
    """The series de-identified in place by another tool (dicom-anonymizer's Basic Profile)."""
    import pydicom
    from dicomanonymizer import anonymize_dataset

    for file in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(file)
        anonymize_dataset(ds)
        if mark:
            ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "DICOM PS3.15 Basic Profile"
        ds.save_as(file)


def _dicom_site(tmp_path, creds, policy: str = "", mask: str = "mask.npy") -> Path:
    root = tmp_path / "ct"
    _dicom_series(root / "images", 4)
    volume = np.zeros((4, 128, 128), np.uint8)
    volume[:, 32:64, 32:64] = 1
    np.save(root / "mask.npy", volume)
    return _site_yaml(tmp_path, creds, f"{{format: dicom, path: ct, masks: {mask}}}",
                      extra=f"policy: {{tasks: [segmentation]{policy}}}\n")


def test_a_series_deidentified_to_the_basic_profile_passes_and_an_unmarked_one_does_not(cli, capsys, tmp_path, creds):
    yaml = _dicom_site(tmp_path, creds, ", require_deidentified: true")
    assert cli("site", "check", yaml) == 2  # as the hospital exported it
    assert "require_deidentified" in capsys.readouterr().err
    _deidentified(tmp_path / "ct" / "images", mark=False)
    assert cli("site", "check", yaml) == 2  # dummy values, no marker: the site cannot tell
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    assert report["phi"]["private_tags"]["files"] == 0 and "PatientID" not in report["phi"]["attributes"]
    _deidentified(tmp_path / "ct" / "images")
    code = cli("site", "check", yaml)
    assert code == 0, capsys.readouterr().err
    phi = json.loads((tmp_path / "state" / "site-check.json").read_text())["phi"]
    assert phi["verdict"] == "de-identified" and phi["markers"] == {"PatientIdentityRemoved": 4,
                                                                    "DeidentificationMethod": 4}


def test_a_marked_file_that_still_carries_what_the_profile_removes_is_identifying(tmp_path):
    import pydicom
    from dicomanonymizer import anonymize_dataset
    from pydicom.data import get_testdata_file

    from medfed.client.site_daemon.phi import scan_header

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    anonymize_dataset(ds)
    ds.PatientIdentityRemoved = "YES"
    assert scan_header(ds).verdict == "de-identified"
    ds.PatientAddress = "1 Hospital Road"  # removed (X) by the profile
    found = scan_header(ds)
    assert found.verdict == "identifying" and found.removed_by_profile == ["PatientAddress"]
    ds.add_new(0x00091001, "LO", "scanner's private note")
    assert scan_header(ds).private_tags == 1


def test_spacing_along_the_slices_comes_from_their_positions_not_their_thickness(cli, capsys, tmp_path, creds):
    _dicom_series(tmp_path / "ct" / "images", 4, gap=2.5)  # 5 mm thick slices, 2.5 mm apart (overlapping)
    volume = np.zeros((4, 128, 128), np.uint8)
    volume[:, 32:64, 32:64] = 1
    np.save(tmp_path / "ct" / "mask.npy", volume)
    yaml = _site_yaml(tmp_path, creds, "{format: dicom, path: ct, masks: mask.npy}",
                      extra="policy: {tasks: [segmentation]}\n")
    cli("site", "check", yaml)
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    assert report["spacing_mm"]["most_common"] == "0.6615x0.6615x2.5"


def test_the_site_does_not_start_while_headers_identify_patients(cli, capsys, tmp_path, creds):
    yaml = _dicom_site(tmp_path, creds, ", require_deidentified: true")
    assert cli("site", "start", yaml) == 2  # refused before any connection is tried
    err = capsys.readouterr().err
    assert "require_deidentified: true, but 4 of 4 DICOM files identify patients" in err
    assert "connecting" not in err


def test_a_dicom_mask_is_scanned_too(cli, capsys, tmp_path, creds):
    import pydicom
    from pydicom.data import get_testdata_file

    yaml = _dicom_site(tmp_path, creds, mask="seg.dcm")
    _deidentified(tmp_path / "ct" / "images")
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(tmp_path / "ct" / "seg.dcm")  # carries a name
    cli("site", "check", yaml)
    phi = json.loads((tmp_path / "state" / "site-check.json").read_text())["phi"]
    assert phi["files"] == 5 and phi["verdicts"] == {"de-identified": 4, "identifying": 1}
    assert phi["attributes"]["PatientName"] == 1


def test_site_check_on_dicom_warns_about_phi_and_lists_a_corrupt_file(cli, capsys, tmp_path, creds):
    root = tmp_path / "ct"
    _dicom_series(root / "images", 4)
    mask = np.zeros((4, 128, 128), np.uint8)
    mask[:, 32:64, 32:64] = 1
    np.save(root / "mask.npy", mask)
    yaml = _site_yaml(tmp_path, creds, "{format: dicom, path: ct, masks: mask.npy}",
                      extra="policy: {tasks: [segmentation]}\n")

    code = cli("site", "check", yaml)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "WARNING" in err
    for tag in ("PatientName", "PatientID", "InstitutionName", "Basic Confidentiality Profile"):
        assert tag in err
    report_text = (tmp_path / "state" / "site-check.json").read_text()
    for value in PHI_VALUES:
        assert value not in err and value not in report_text
    report = json.loads(report_text)
    phi = report["phi"]
    assert phi["files"] == 4 and phi["verdict"] == "identifying" and phi["verdicts"] == {"identifying": 4}
    assert phi["attributes"]["PatientName"] == 4 and phi["attributes"]["StudyDate"] == 4
    assert phi["private_tags"] == {"files": 4, "tags": 4 * 179} and phi["uids"]["StudyInstanceUID"] == 4
    assert report["spacing_mm"]["most_common"] == "0.6615x0.6615x5"
    assert report["sizes"]["most_common"] == "128x128"
    assert report["counts"] == {"train": 3, "val": 1}

    (root / "images" / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    shutil.copy(root / "images" / "slice0.dcm", root / "images" / "truncated.dcm")
    with open(root / "images" / "truncated.dcm", "r+b") as f:
        f.truncate(2000)
    code = cli("site", "check", yaml)
    err = capsys.readouterr().err
    assert code == 2
    report = json.loads((tmp_path / "state" / "site-check.json").read_text())
    assert {Path(r["file"]).name for r in report["unreadable"]} == {"corrupt.dcm", "truncated.dcm"}
    assert report["files"] == 6  # every slice file, the damaged ones included
    assert report["phi"]["files"] >= 4 and report["sizes"]["most_common"] == "128x128"
    assert "PatientName" in err
