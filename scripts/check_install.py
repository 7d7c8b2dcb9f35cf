"""Checks a non-editable install of medfed: every module of the source tree is in it and imports.

pyproject.toml lists medfed's packages and their folders by hand (`package-dir`), so a
new sub-package left off that list works in an editable install and is missing from a
real one. Run from outside the repository, with the installed copy first on sys.path:

    python scripts/check_install.py REPO INSTALLED_SITE_PACKAGES
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path


def source_modules(repo: Path) -> set[str]:
    """Every module of the source tree, sub-packages' included, by its import name (through
    pyproject's package-dir)."""
    folders = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = set()
    for package, folder in folders.items():
        root = repo / folder
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if all((root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
                modules.add(".".join([package, *parts]).removesuffix(".__init__"))
    return modules


def main(repo: Path, site: Path) -> int:
    missing, broken = [], []
    for name in sorted(source_modules(repo)):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name}: {exc}")
            continue
        if not Path(module.__file__).resolve().is_relative_to(site.resolve()):
            broken.append(f"{name}: imported from {module.__file__}, not from the install")
    for line in missing + broken:
        print(f"check_install: {line}", file=sys.stderr)
    if not missing and not broken:
        print(f"check_install: all {len(source_modules(repo))} modules import from the installed package")
    return 1 if missing or broken else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
