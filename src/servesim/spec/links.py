"""Links between devices and storage: PCIe generations, Ethernet, Wi-Fi, Thunderbolt, NVMe/UFS,
as bandwidth (bytes/s, one direction) and latency (s), from `data/links.yaml`.

Hybrid execution (weights or KV over PCIe), a model split across edge devices (activations over
Ethernet or Wi-Fi) and TPI-LLM's sliding-window weights (layers read from storage) price their
transfers with these numbers: `transfer_s = latency + bytes / bandwidth`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from servesim.errors import ServesimError

LINK_KINDS = ("pcie", "ethernet", "wifi", "thunderbolt", "usb", "storage", "chip")


@dataclass(frozen=True)
class Link:
    """One link or storage device: sustained bandwidth one way and small-message latency."""

    name: str
    kind: str
    bw_bytes_per_s: float
    latency_s: float

    def transfer_s(self, nbytes: float) -> float:
        """Seconds to move `nbytes` over the link (one message)."""
        return self.latency_s + nbytes / self.bw_bytes_per_s


def _link(name: str, entry: Any, origin: str) -> Link:
    where = f"Link {name!r} in {origin}"
    if not isinstance(entry, dict):
        raise ServesimError(f"{where} must map kind, bw_gb_s and latency_us.")
    missing = [k for k in ("kind", "bw_gb_s", "latency_us") if k not in entry]
    if missing:
        raise ServesimError(f"{where} lacks {', '.join(missing)}; add them to its entry.")
    kind = str(entry["kind"])
    if kind not in LINK_KINDS:
        raise ServesimError(
            f"{where}: kind {kind!r} is unknown; use one of {', '.join(LINK_KINDS)}."
        )
    try:
        bw, lat = float(entry["bw_gb_s"]), float(entry["latency_us"])
    except (TypeError, ValueError):
        raise ServesimError(f"{where}: bw_gb_s and latency_us must be numbers.") from None
    if not bw > 0 or not lat >= 0:
        raise ServesimError(f"{where}: bw_gb_s must be > 0 and latency_us >= 0.")
    return Link(name, kind, bw * 1e9, lat * 1e-6)


def _parse(text: str, origin: str) -> dict[str, Link]:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise ServesimError(f"Link file {origin} is not valid YAML; fix the syntax.") from None
    entries = doc.get("links", doc) if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise ServesimError(f"Link file {origin} must map link names to entries under `links:`.")
    return {str(n): _link(str(n), e, origin) for n, e in entries.items()}


@cache
def _bundled() -> dict[str, Link]:
    text = resources.files("servesim").joinpath("data/links.yaml").read_text(encoding="utf-8")
    return _parse(text, "the bundled links table")


def links(extra_file: str | Path | None = None) -> dict[str, Link]:
    """The bundled links table, overlaid by a user YAML file of the same schema."""
    out = dict(_bundled())
    if extra_file:
        p = Path(extra_file)
        if not p.is_file():
            raise ServesimError(f"Link file {str(p)!r} does not exist; check the path.")
        out.update(_parse(p.read_text(encoding="utf-8"), str(p)))
    return out


def get_link(name: str, extra_file: str | Path | None = None) -> Link:
    """A link by name (case and dashes ignored), e.g. `pcie4_x16`, `10gbe`, `wifi6`."""
    table = links(extra_file)
    key = str(name).strip().lower().replace("-", "_")
    if key not in table:
        raise ServesimError(f"Unknown link {name!r}; use one of: {', '.join(table)}.")
    return table[key]
