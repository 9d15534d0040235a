"""Accelerator specs: the bundled catalog (`data/devices.yaml`) plus any YAML a user adds.

A `Device` carries spec-sheet numbers in SI units. The predictor scales fitted efficiencies by
these, so a device nobody has measured still gets a sensible iteration time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from servesim.errors import ServesimError
from servesim.spec.dtypes import BYTES_PER_ELEMENT, canonical


@dataclass(frozen=True)
class Device:
    """One accelerator (or CPU socket) as the predictor sees it. Dense peak rates, SI units."""

    name: str
    peak_flops_per_s: dict[str, float]  # dense tensor-core/matrix rate per dtype (bf16, fp8, ...)
    mem_bytes: float
    mem_bw_bytes_per_s: float
    num_sms: int  # streaming multiprocessors / compute units / cores
    l2_bytes: float
    link_bw_bytes_per_s: float  # intra-node GPU-to-GPU, per GPU, one direction
    link_latency_s: float
    max_devices_per_node: int
    net_bw_bytes_per_s: float  # scale-out network per device, one direction
    net_latency_s: float
    host_bw_bytes_per_s: float  # device <-> host memory (PCIe/C2C), one direction
    idle_power_w: float
    max_power_w: float
    price_per_hour: float  # typical on-demand cloud price, USD per device-hour
    kind: str = "gpu"  # gpu | cpu | edge
    vendor: str = ""
    link_name: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # Edge and CPU facts (0 / False when the entry does not say): DRAM channels; what one core
    # streams from DRAM on its own (a few threads cannot use a socket's full bandwidth); memory
    # shared by CPU and GPU (Apple M-series, Jetson), so "offloading" moves no bytes.
    mem_channels: int = 0
    core_bw_bytes_per_s: float = 0.0
    unified_memory: bool = False
    # The serving engines' host work (Python scheduling, kernel launches outside CUDA graphs,
    # the API server) on this system's host CPU, relative to the x86 hosts the engine
    # profiles' figures were measured on (1.0): GB200/GB300's Grace hosts are slower.
    host_time_factor: float = 1.0
    # GPUs one host (one OS instance) drives, as launchers count `gpus_per_node`; 0: the NVLink
    # domain's, up to 8 (an HGX board). GB200/GB300 NVL72 racks are 18 trays of 4 GPUs each.
    gpus_per_host: int = 0

    @property
    def host_gpus(self) -> int:
        """GPUs of one host (`gpus_per_host`, else the NVLink domain's up to 8)."""
        return self.gpus_per_host or min(self.max_devices_per_node, 8)

    def stream_bw(self, threads: int = 0) -> float:
        """DRAM bytes/s that `threads` cores can stream (0: all cores): the socket's bandwidth,
        capped by `threads` times one core's when the entry gives it."""
        if not self.core_bw_bytes_per_s:
            return self.mem_bw_bytes_per_s
        cores = self.num_sms if threads <= 0 else min(threads, self.num_sms)
        return min(self.mem_bw_bytes_per_s, cores * self.core_bw_bytes_per_s)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for a compute dtype, falling back to the nearest wider format."""
        d = canonical(dtype)
        for candidate in (d, *_FALLBACK.get(d, ())):
            if candidate in self.peak_flops_per_s:
                return self.peak_flops_per_s[candidate]
        raise ServesimError(
            f"Device {self.name!r} has no peak FLOP/s for {d}; add `peak_tflops: {{{d}: ...}}` "
            "to its catalog entry."
        )


# When a device lacks a native rate for a dtype, it runs it in the next wider one. Integer and
# float formats never stand in for each other: int8 tensor cores cannot run fp8 math (A100 runs
# fp8 weights dequantised to bf16), and fp8 cores do not run int8 (Blackwell Ultra).
_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp4": ("fp8", "bf16", "fp16", "fp32"),
    "mxfp4": ("fp4", "fp8", "bf16", "fp16", "fp32"),
    "int4": ("int8", "bf16", "fp16", "fp32"),
    "fp8": ("bf16", "fp16", "fp32"),
    "int8": ("bf16", "fp16", "fp32"),
    "bf16": ("fp16", "fp32"),
    "fp16": ("bf16", "fp32"),
    "fp32": ("tf32", "bf16", "fp16"),
    "tf32": ("fp32", "bf16", "fp16"),
}

# YAML field -> (Device field, multiplier to SI units)
_NUMERIC: dict[str, tuple[str, float]] = {
    "mem_gb": ("mem_bytes", 1e9),
    "mem_bw_gb_s": ("mem_bw_bytes_per_s", 1e9),
    "l2_mb": ("l2_bytes", 1e6),
    "link_bw_gb_s": ("link_bw_bytes_per_s", 1e9),
    "link_latency_us": ("link_latency_s", 1e-6),
    "net_bw_gb_s": ("net_bw_bytes_per_s", 1e9),
    "net_latency_us": ("net_latency_s", 1e-6),
    "host_bw_gb_s": ("host_bw_bytes_per_s", 1e9),
    "idle_power_w": ("idle_power_w", 1.0),
    "max_power_w": ("max_power_w", 1.0),
    "price_per_hour": ("price_per_hour", 1.0),
}
_INTEGER = ("num_sms", "max_devices_per_node")
_REQUIRED = ("peak_tflops", *_NUMERIC, *_INTEGER)
# The memory the driver reports (nvidia-smi's total, MiB): it can stand for `mem_gb`, whose
# datasheet "80 GB" is nearer 80 GiB (an H100 SXM reports 81,559 MiB = 85.5 GB). Engines take
# their memory fractions of this total (torch.cuda.mem_get_info), so where it is known it is
# what the catalog holds.
MEM_MIB = "mem_mib"
_OPTIONAL = (
    MEM_MIB,
    "kind",
    "vendor",
    "link_name",
    "aliases",
    "mem_channels",
    "core_bw_gb_s",
    "unified_memory",
    "host_time_factor",
    "gpus_per_host",
)
_KINDS = ("gpu", "cpu", "edge")


def _number(value: Any, field_name: str, where: str) -> float:
    """A finite, non-negative number from a YAML value, or a ServesimError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ServesimError(f"{where}: {field_name} {value!r} is not a number; write e.g. 80.")
    try:
        x = float(value)
    except ValueError:
        raise ServesimError(
            f"{where}: {field_name} {value!r} is not a number; write e.g. 80."
        ) from None
    if not math.isfinite(x) or x < 0:
        raise ServesimError(f"{where}: {field_name} is {value!r}; use a finite number >= 0.")
    return x


def _device_from_entry(name: str, entry: dict[str, Any], origin: str) -> Device:
    """Build a Device from one YAML entry whose numbers are in the catalog's human units."""
    where = f"Device {name!r} in {origin}"
    if not isinstance(entry, dict):
        raise ServesimError(f"{where} must be a mapping of spec fields, not {entry!r}.")
    if MEM_MIB in entry:  # the driver's figure stands for the datasheet's
        mib = _number(entry[MEM_MIB], MEM_MIB, where)
        entry = {k: v for k, v in entry.items() if k != MEM_MIB}
        entry["mem_gb"] = mib * 2**20 / 1e9
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise ServesimError(f"{where} lacks {', '.join(missing)}; add them to its entry.")
    unknown = [k for k in entry if k not in _REQUIRED and k not in _OPTIONAL]
    if unknown:
        known = ", ".join((*_REQUIRED, *_OPTIONAL))
        raise ServesimError(
            f"{where} has unknown field(s) {', '.join(map(str, unknown))}; use only: {known}."
        )
    raw_peak = entry["peak_tflops"]
    if not isinstance(raw_peak, dict) or not raw_peak:
        raise ServesimError(f"{where}: peak_tflops must map dtypes to TFLOP/s, e.g. {{bf16: 989}}.")
    peak: dict[str, float] = {}
    for dtype, value in raw_peak.items():
        try:
            key = canonical(str(dtype))
        except ServesimError:
            raise ServesimError(
                f"{where}: peak_tflops has unknown dtype {dtype!r}; use one of: "
                f"{', '.join(BYTES_PER_ELEMENT)}."
            ) from None
        peak[key] = _number(value, f"peak_tflops.{dtype}", where) * 1e12
    values = {attr: _number(entry[k], k, where) * scale for k, (attr, scale) in _NUMERIC.items()}
    ints: dict[str, int] = {}
    for k in _INTEGER:
        x = _number(entry[k], k, where)
        if x != int(x) or x < 1:
            raise ServesimError(f"{where}: {k} is {entry[k]!r}; use a whole number >= 1.")
        ints[k] = int(x)
    kind = str(entry.get("kind", "gpu"))
    if kind not in _KINDS:
        raise ServesimError(f"{where}: kind {kind!r} is unknown; use one of: {', '.join(_KINDS)}.")
    aliases = entry.get("aliases", ())
    if isinstance(aliases, str) or not isinstance(aliases, list | tuple):
        raise ServesimError(f"{where}: aliases must be a list, e.g. [h100, h100-sxm].")
    channels = _number(entry.get("mem_channels", 0), "mem_channels", where)
    if channels != int(channels):
        raise ServesimError(
            f"{where}: mem_channels is {entry['mem_channels']!r}; use a whole number."
        )
    unified = entry.get("unified_memory", False)
    if not isinstance(unified, bool):
        raise ServesimError(f"{where}: unified_memory must be true or false, not {unified!r}.")
    host = _number(entry.get("host_time_factor", 1.0), "host_time_factor", where)
    if host <= 0:
        raise ServesimError(f"{where}: host_time_factor is {host!r}; use a number > 0 (1: x86).")
    per_host = _number(entry.get("gpus_per_host", 0), "gpus_per_host", where)
    if per_host != int(per_host):
        raise ServesimError(f"{where}: gpus_per_host is {per_host!r}; use a whole number.")
    return Device(
        name=name,
        host_time_factor=host,
        gpus_per_host=int(per_host),
        mem_channels=int(channels),
        core_bw_bytes_per_s=_number(entry.get("core_bw_gb_s", 0), "core_bw_gb_s", where) * 1e9,
        unified_memory=unified,
        peak_flops_per_s=peak,
        num_sms=ints["num_sms"],
        max_devices_per_node=ints["max_devices_per_node"],
        kind=kind,
        vendor=str(entry.get("vendor", "")),
        link_name=str(entry.get("link_name", "")),
        aliases=tuple(str(a) for a in aliases),
        **values,
    )


def _load_entries(text: str, origin: str) -> dict[str, dict[str, Any]]:
    """Parse a device YAML document into raw entries (name -> mapping of catalog fields)."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "syntax error"
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise ServesimError(
            f"Device file {origin} is not valid YAML ({at}{problem}); fix the syntax."
        ) from None
    if not isinstance(doc, dict):
        raise ServesimError(f"Device file {origin} must map device names to spec entries.")
    entries = doc.get("devices", doc)
    if not isinstance(entries, dict):
        raise ServesimError(
            f"Device file {origin}: `devices` must map device names to spec entries."
        )
    out: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ServesimError(
                f"Device {str(name)!r} in {origin} must be a mapping of spec fields, not {entry!r}."
            )
        out[str(name)] = entry
    return out


def _load_yaml(text: str, origin: str) -> dict[str, Device]:
    """Parse a complete device YAML document into Devices."""
    return {n: _device_from_entry(n, e, origin) for n, e in _load_entries(text, origin).items()}


@cache
def _bundled_entries() -> dict[str, dict[str, Any]]:
    text = resources.files("servesim").joinpath("data/devices.yaml").read_text(encoding="utf-8")
    return _load_entries(text, "the bundled catalog")


@cache
def _bundled() -> dict[str, Device]:
    return {
        n: _device_from_entry(n, e, "the bundled catalog") for n, e in _bundled_entries().items()
    }


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


class Catalog:
    """Devices by name or alias: the bundled catalog overlaid by user YAML files.

    A user entry whose name or alias matches a known device updates only the fields it gives
    (e.g. just `price_per_hour`); any other entry adds a device and must give every field.
    """

    def __init__(
        self, extra_files: list[str | Path] | None = None, *, read_env: bool = True
    ) -> None:
        self.devices: dict[str, Device] = dict(_bundled())
        raw: dict[str, dict[str, Any]] = dict(_bundled_entries())
        files = list(extra_files or [])
        if read_env:  # the files SERVESIM_DEVICES lists, after the given ones
            files.extend(_env_device_files())
        for path in files:
            p = Path(path)
            if not p.is_file():
                raise ServesimError(f"Device file {str(p)!r} does not exist; check the path.")
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ServesimError(f"Device file {str(p)!r} cannot be read ({exc}).") from None
            index = self._build_index()
            for name, entry in _load_entries(text, str(p)).items():
                target = index.get(_key(name), name)
                base = dict(raw.get(target, {}))
                if "mem_gb" in entry:  # a user's mem_gb replaces the bundled driver figure
                    base.pop(MEM_MIB, None)
                merged = {**base, **entry}
                raw[target] = merged
                self.devices[target] = _device_from_entry(target, merged, str(p))
                index = self._build_index()
        self._index = self._build_index()

    def _build_index(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for name, dev in self.devices.items():
            for alias in dev.aliases:
                index[_key(alias)] = name
        for name in self.devices:  # a canonical name always wins over another device's alias
            index[_key(name)] = name
        return index

    def get(self, name: str) -> Device:
        """Look up a device by name or alias (case, dashes and spaces ignored)."""
        key = _key(name)
        if key not in self._index:
            known = ", ".join(sorted(self.devices))
            raise ServesimError(
                f"Unknown device {name!r}; use one of: {known}, or add it with --devices FILE."
            )
        return self.devices[self._index[key]]

    def names(self) -> list[str]:
        """Canonical device names in catalog order."""
        return list(self.devices)


def catalog(devices_file: str | Path | None = None) -> Catalog:
    """The bundled catalog, overlaid by one user YAML file when given (`--devices FILE`)."""
    return Catalog([devices_file] if devices_file else None)


def get_device(name: str, extra_files: list[str | Path] | None = None) -> Device:
    """Shorthand for `Catalog(extra_files).get(name)`, the catalog built once per set of files
    as they stand (the predictor looks GPUs up by name on every priced shape: building the
    catalog each time was about 15 % of a plan's time)."""
    files = [*(extra_files or ()), *_env_device_files()]
    return _catalog_of(tuple(_stamp(f) for f in files)).get(name)


def _env_device_files() -> list[str]:
    env = os.environ.get("SERVESIM_DEVICES")
    return [p for p in env.split(os.pathsep) if p] if env else []


def _stamp(path: str | Path) -> tuple[str, int, int]:
    """A device file as the catalog would read it now: path, modification time and size (a
    file edited or replaced gets a new catalog; a missing one fails when the catalog reads)."""
    try:
        st = Path(path).stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _catalog_of(stamps: tuple[tuple[str, int, int], ...]) -> Catalog:
    # the stamps already list SERVESIM_DEVICES' files
    return Catalog([path for path, _, _ in stamps], read_env=False)
