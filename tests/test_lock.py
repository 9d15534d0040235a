"""The pinned set is complete: every distribution the test environment holds (installed from
constraints.txt as constraints) has its exact version pinned there, so CI on a fresh clone
installs what was tested rather than whatever the registry serves that day."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
PYLOCK = ROOT / "pylock.toml"
UNPINNED = {"servesim", "pip", "setuptools", "wheel"}  # the project and the installer


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    return pins


def test_every_installed_distribution_is_pinned_at_its_version() -> None:
    pins = _pins()
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
    assert not missing, f"installed but not pinned in constraints.txt: {missing}"
    assert not other, f"installed at another version than pinned: {other}"


def test_the_standard_lock_file_holds_the_same_set_with_hashes() -> None:
    """pylock.toml (PEP 751, written by `pip lock` in scripts/lock.sh) names exactly the pinned
    distributions at the pinned versions, each with a file and its sha256."""
    lock = tomllib.loads(PYLOCK.read_text())
    assert lock["lock-version"] == "1.0"
    got = {}
    for pkg in lock["packages"]:
        files = pkg.get("wheels", []) + ([pkg["sdist"]] if "sdist" in pkg else [])
        assert files and all(f["hashes"]["sha256"] for f in files), pkg["name"]
        got[_norm(pkg["name"])] = pkg["version"].split("+")[0]
    # pip freeze leaves the installer's own packages out of constraints.txt; pip lock keeps
    # setuptools, which torch requires.
    assert {k: v for k, v in got.items() if k not in UNPINNED} == _pins()
