"""Run settings from command-line flags and YAML/JSON files, merged into one plain dict.

Every long flag `--max-num-seqs` has a file key `max_num_seqs` (dashes or underscores). Flags the
user typed win over the file; the file wins over built-in defaults. Unknown file keys are refused
with the list of valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from servesim.errors import ServesimError


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of settings."""
    p = Path(path)
    if not p.is_file():
        raise ServesimError(f"Config file {str(p)!r} does not exist; check the path.")
    text = p.read_text()
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ServesimError(f"Config file {str(p)!r} is not valid YAML/JSON: {exc}.") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ServesimError(f"Config file {str(p)!r} must hold a mapping of setting: value.")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def merge(
    flags: dict[str, Any], file_settings: dict[str, Any], defaults: dict[str, Any], origin: str
) -> dict[str, Any]:
    """Defaults, overlaid by the file, overlaid by flags the user actually gave (not None)."""
    unknown = sorted(set(file_settings) - set(defaults))
    if unknown:
        raise ServesimError(
            f"Unknown setting(s) {', '.join(unknown)} in {origin}; valid keys are: "
            f"{', '.join(sorted(defaults))}."
        )
    out = dict(defaults)
    out.update(file_settings)
    out.update({k: v for k, v in flags.items() if v is not None and k in defaults})
    return out


def add_switch(group: Any, flag: str, help: str) -> None:
    """An on/off flag (`--x` / `--no-x`) that stays None when not given, so a config file or
    the engine's default decides."""
    group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)
