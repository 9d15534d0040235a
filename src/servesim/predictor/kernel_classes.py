"""Which kernel class an operator call runs: the GEMM compute format a device really uses and
whether its GPUs talk over a switched fabric (shared by the roofline and the transfer model)."""

from __future__ import annotations

from servesim.spec.devices import Device
from servesim.spec.dtypes import canonical, compute_dtype

LOW_PRECISION_COMPUTE = ("fp8", "int8", "fp4")  # GEMMs that quantise activations first


def gemm_dtypes(dtype: str, weight_dtype: str | None, device: Device) -> tuple[str, str]:
    """(compute dtype, weight dtype). 4-bit formats named as compute dtype mean W4A16, and an
    8-bit compute dtype the device has no native rate for runs weight-only in bf16 (Marlin)."""
    cdt = canonical(dtype)
    wdt = canonical(weight_dtype) if weight_dtype is not None else cdt
    if cdt in ("int4", "mxfp4") or (cdt == "fp4" and weight_dtype is None):
        cdt = compute_dtype(cdt)
    if cdt in LOW_PRECISION_COMPUTE and cdt not in device.peak_flops_per_s:
        cdt = "bf16"
    return cdt, wdt


def nvlink_class(device: Device) -> bool:
    """Whether GPUs talk over a switched scale-up fabric (NVLink/NVSwitch, Infinity Fabric)."""
    name = device.link_name.lower()
    fabric = any(t in name for t in ("nvlink", "xgmi", "infinity"))
    return device.kind == "gpu" and (fabric or device.link_bw_bytes_per_s >= 100e9)
