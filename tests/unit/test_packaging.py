"""The wheel (and so every image, which pip-installs the project) carries every package of the
source tree: pyproject.toml lists packages by hand (modelservice lives under operator/), and a
subpackage left off that list would be missing from the images while every test here passes."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_package_is_in_the_distribution():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = set()
    for top, directory in setuptools["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory)
            on_disk.add(".".join((top, *relative.parts)))
    assert on_disk == listed, (f"packages missing from pyproject.toml: {sorted(on_disk - listed)}; "
                               f"listed but absent: {sorted(listed - on_disk)}")
