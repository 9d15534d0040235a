"""The pinned set is complete: every distribution the test environment holds (installed from
requirements.txt as constraints) has its exact version pinned there, so CI on a fresh clone
installs what was tested rather than whatever the registry serves that day."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
UNPINNED = {"servesim", "pip", "setuptools", "wheel"}  # the project and the installer


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_installed_distribution_is_pinned_at_its_version() -> None:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    missing, other = [], []
    for dist in metadata.distributions():
        name = _norm(dist.metadata["Name"])
        if name in UNPINNED:
            continue
        version = dist.version.split("+")[0]  # torch's local label (+cpu) is left out of pins
        if name not in pins:
            missing.append(f"{name}=={version}")
        elif pins[name] != version:
            other.append(f"{name} {version} (pinned {pins[name]})")
    assert not missing, f"installed but not pinned in requirements.txt: {missing}"
    assert not other, f"installed at another version than pinned: {other}"
