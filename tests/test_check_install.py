"""scripts/check_install.py: a package left off pyproject's list fails CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

PYPROJECT = """\
[tool.setuptools]
package-dir = { "toypkg" = "toypkg", "toypkg.parts" = "parts" }
"""


def _tree(root: Path, unlisted: bool) -> Path:
    (root / "toypkg").mkdir(parents=True)
    (root / "parts").mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "toypkg" / "__init__.py").write_text("")
    (root / "parts" / "__init__.py").write_text("")
    (root / "parts" / "wheel.py").write_text("SPOKES = 32\n")
    if unlisted:  # a new sub-package nobody added to package-dir
        (root / "parts" / "brakes").mkdir()
        (root / "parts" / "brakes" / "__init__.py").write_text("")
    return root


def _install(repo: Path, site: Path) -> None:
    """What a non-editable install of the listed packages holds."""
    (site / "toypkg" / "parts").mkdir(parents=True)
    (site / "toypkg" / "__init__.py").write_text("")
    (site / "toypkg" / "parts" / "__init__.py").write_text("")
    (site / "toypkg" / "parts" / "wheel.py").write_text((repo / "parts" / "wheel.py").read_text())


def _check(repo: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "check_install.py"), str(repo), str(site)],
                          cwd=site, env={"PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=60)


def test_an_install_with_every_listed_module_passes(tmp_path):
    repo, site = _tree(tmp_path / "repo", unlisted=False), tmp_path / "site"
    _install(repo, site)
    done = _check(repo, site)
    assert done.returncode == 0, done.stderr
    assert "all 3 modules" in done.stdout


def test_a_sub_package_missing_from_pyproject_fails(tmp_path):
    repo, site = _tree(tmp_path / "repo", unlisted=True), tmp_path / "site"
    _install(repo, site)
    done = _check(repo, site)
    assert done.returncode == 1
    assert "toypkg.parts.brakes" in done.stderr
