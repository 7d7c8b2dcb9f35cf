"""MedMNIST v2 files: found in ``MEDFED_DATA_DIR``, downloaded when missing and possible.

The download uses the `medmnist` package's catalogue (addresses and checksums). That
package pulls torchvision as a dependency, so medfed does not require it: install it
with ``pip install --no-deps medmnist`` where downloads are wanted.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from medfed.errors import ConfigError, DataError
from medfed.models.experiment_data import data_dir

# Every 2D MedMNIST v2 dataset; labels tell binary, multi-class and multi-label apart.
DATASETS_2D = (
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)
SIZES = (28, 64, 128, 224)


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def medmnist_path(flag: str, size: int, root: str | None = None) -> Path:
    """The local file of a MedMNIST dataset, downloading it if it is missing."""
    if flag not in DATASETS_2D:
        raise ConfigError(
            f"unknown dataset '{flag}' (data.dataset): choose a MedMNIST 2D dataset "
            f"({', '.join(DATASETS_2D)}) or 'folder'"
        )
    if size not in SIZES:
        raise ConfigError(f"bad value for 'data.size': MedMNIST sizes are {SIZES}")
    path = data_dir(root) / file_name(flag, size)
    if not path.is_file():
        download(flag, size, path)
    return path


MANUAL_DOWNLOAD = "https://zenodo.org/records/10519652"  # the MedMNIST v2 files, as the medmnist package fetches them


def download(flag: str, size: int, path: Path) -> None:
    where = (f"download {path.name} from {MANUAL_DOWNLOAD} and put it into {path.parent} "
             "(or point data.root or MEDFED_DATA_DIR at the folder that holds it)")
    try:
        from medmnist import INFO
    except ImportError:
        raise DataError(
            f"dataset file not found: {path}; {where}, or install the medmnist package "
            f"(pip install --no-deps medmnist) so that medfed can download it"
        ) from None
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = INFO[flag][f"url{suffix}"], INFO[flag][f"MD5{suffix}"]
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(url, md5, path, where)
    except DataError:
        for folder in made:  # nothing left behind by a download that failed (innermost first)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _fetch(url: str, md5: str, path: Path, where: str) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, partial.open("wb") as out:
            digest = hashlib.md5()
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"dataset file not found: {path}, and the download failed ({exc}); {where}") from exc
    if digest.hexdigest() != md5:
        partial.unlink(missing_ok=True)
        raise DataError(f"downloaded {path.name} has the wrong checksum; {where}")
    partial.replace(path)
