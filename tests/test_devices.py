"""Device catalog: every bundled entry loads in SI units, names resolve, user files extend it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from servesim.errors import ServesimError
from servesim.spec.devices import Catalog, Device, get_device

REQUIRED_NAMES = [
    "h100_sxm",
    "h100_pcie",
    "h200_sxm",
    "b200_sxm",
    "b300",
    "gb200",
    "gb300",
    "a100_sxm",
    "a100_sxm_40gb",
    "l40s",
    "l4",
    "a10g",
    "t4",
    "mi300x",
    "jetson_orin",
    "cpu",
]

NEW_DEVICE = """
devices:
  my_npu:
    aliases: [npu1]
    kind: gpu
    peak_tflops: {bf16: 400, fp8: 800}
    mem_gb: 96
    mem_bw_gb_s: 2400
    num_sms: 64
    l2_mb: 32
    link_bw_gb_s: 200
    link_latency_us: 3
    max_devices_per_node: 8
    net_bw_gb_s: 25
    net_latency_us: 5
    host_bw_gb_s: 32
    idle_power_w: 60
    max_power_w: 450
    price_per_hour: 2.0
"""


@pytest.fixture(autouse=True)
def _no_env_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVESIM_DEVICES", raising=False)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog()


def test_every_required_device_resolves(catalog: Catalog) -> None:
    for name in REQUIRED_NAMES:
        assert isinstance(catalog.get(name), Device)


def test_every_entry_is_physically_plausible(catalog: Catalog) -> None:
    for name in catalog.names():
        d = catalog.devices[name]
        assert d.kind in ("gpu", "cpu", "edge"), name
        # TFLOP/s .. 10 PFLOP/s; a 2-vCPU slice (this_cpu) or a phone reaches down to 0.1
        low_flops, low_bw = (1e11, 5e10) if d.kind != "gpu" else (1e12, 1e11)
        assert low_flops <= d.peak_flops("bf16") <= 1e16, name
        assert 1e9 <= d.mem_bytes <= 1e12, name
        assert low_bw <= d.mem_bw_bytes_per_s <= 1e13, name
        assert 1e5 <= d.l2_bytes <= 1e9, name
        assert 0 < d.link_latency_s < 1e-2 and 0 < d.net_latency_s < 1e-2, name  # Wi-Fi ~2 ms
        assert 0 < d.idle_power_w < d.max_power_w <= 2000, name
        assert 0 < d.price_per_hour < 50, name
        assert d.max_devices_per_node >= 1 and d.num_sms >= 1, name
        # dense rates only: fp8 at most ~2x the bf16 rate (L40S datasheet: 733 vs 362.05)
        if "fp8" in d.peak_flops_per_s:
            assert d.peak_flops_per_s["fp8"] <= 2.03 * d.peak_flops("bf16"), name


def test_h100_numbers_are_si(catalog: Catalog) -> None:
    h = catalog.get("h100_sxm")
    assert h.peak_flops("bf16") == pytest.approx(989e12, rel=0.01)
    assert h.peak_flops("fp8") == pytest.approx(1979e12, rel=0.01)
    assert h.mem_bw_bytes_per_s == pytest.approx(3.35e12)
    assert h.mem_bytes == 81559 * 2**20  # the driver's total (nvidia-smi), not "80 GB"
    assert h.l2_bytes == pytest.approx(50e6)
    assert h.link_bw_bytes_per_s == pytest.approx(450e9)  # 900 GB/s bidirectional / 2
    assert h.link_latency_s == pytest.approx(2e-6)
    assert h.max_power_w == 700


def test_spot_values_from_datasheets(catalog: Catalog) -> None:
    assert catalog.get("a100_sxm").peak_flops("bf16") == pytest.approx(312e12)
    assert catalog.get("a100_sxm").mem_bytes == 81920 * 2**20  # nvidia-smi: 81,920 MiB
    assert catalog.get("a100_sxm_40gb").mem_bytes == pytest.approx(40e9)
    assert catalog.get("h200_sxm").mem_bw_bytes_per_s == pytest.approx(4.8e12)
    assert catalog.get("mi300x").mem_bytes == pytest.approx(192e9)
    assert catalog.get("mi300x").peak_flops("bf16") == pytest.approx(1307.4e12)
    assert catalog.get("l4").peak_flops("fp8") == pytest.approx(242.5e12)
    assert catalog.get("t4").mem_bw_bytes_per_s == pytest.approx(320e9)
    assert catalog.get("a10g").price_per_hour == pytest.approx(1.01)
    assert catalog.get("a100_sxm").price_per_hour == pytest.approx(3.67)
    assert catalog.get("gb200").max_devices_per_node == 72
    assert catalog.get("jetson_orin").kind == "edge"
    assert catalog.get("cpu").kind == "cpu"


def test_ordering_sanity(catalog: Catalog) -> None:
    order = [catalog.get(n) for n in ("b200_sxm", "h100_sxm", "a100_sxm", "l4")]
    flops = [d.peak_flops("bf16") for d in order]
    bw = [d.mem_bw_bytes_per_s for d in order]
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == 4
    assert bw == sorted(bw, reverse=True) and len(set(bw)) == 4
    # Blackwell Ultra: more memory and fp4 than Blackwell, same bf16 tier
    assert catalog.get("b300").mem_bytes > catalog.get("b200").mem_bytes
    assert catalog.get("b300").peak_flops("fp4") > catalog.get("b200").peak_flops("fp4")


def test_prices_are_consistent_with_capability(catalog: Catalog) -> None:
    price = {n: catalog.get(n).price_per_hour for n in ("t4", "l4", "a10g", "a100_sxm", "h100")}
    assert price["t4"] < price["l4"] < price["a10g"] < price["a100_sxm"] < price["h100"]
    assert catalog.get("a100_sxm_40gb").price_per_hour < price["a100_sxm"]


def test_missing_dtypes_fall_back_to_a_wider_native_format(catalog: Catalog) -> None:
    t4, a100 = catalog.get("t4"), catalog.get("a100_sxm")
    assert "bf16" not in t4.peak_flops_per_s and "fp8" not in t4.peak_flops_per_s
    assert t4.peak_flops("bf16") == pytest.approx(65e12)  # runs in fp16
    assert "fp8" not in a100.peak_flops_per_s
    # fp8 weights on Ampere run dequantised at the bf16 rate, not on the int8 tensor cores
    assert a100.peak_flops("fp8") == pytest.approx(a100.peak_flops("bf16"))
    assert catalog.get("h100").peak_flops("fp4") == catalog.get("h100").peak_flops("fp8")
    assert catalog.get("b200").peak_flops("fp4") == pytest.approx(9e15)


@pytest.mark.parametrize(
    "alias, name",
    [
        ("H100", "h100_sxm"),
        ("h100-sxm", "h100_sxm"),
        ("NVIDIA H100 80GB HBM3", "h100_sxm"),
        ("A100", "a100_sxm"),
        ("A100-SXM4-40GB", "a100_sxm_40gb"),
        ("B200", "b200_sxm"),
        ("GB200-NVL72", "gb200"),
        ("MI300X", "mi300x"),
        ("Tesla T4", "t4"),
        (" L40S ", "l40s"),
        ("Jetson-AGX-Orin", "jetson_orin"),
        ("B300", "b300_sxm"),
    ],
)
def test_aliases_are_case_and_dash_insensitive(catalog: Catalog, alias: str, name: str) -> None:
    assert catalog.get(alias).name == name


def test_unknown_device_lists_known_names(catalog: Catalog) -> None:
    with pytest.raises(ServesimError, match="Unknown device 'h900'") as info:
        catalog.get("h900")
    msg = str(info.value)
    assert "h100_sxm" in msg and "mi300x" in msg and "--devices" in msg


def test_user_file_adds_and_partially_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(NEW_DEVICE + "  h100:\n    price_per_hour: 2.49\n")
    cat = Catalog([path])
    npu = cat.get("NPU1")
    assert npu.name == "my_npu"
    assert npu.peak_flops("bf16") == pytest.approx(400e12)
    assert npu.mem_bytes == pytest.approx(96e9)
    h100 = cat.get("h100_sxm")  # overridden through an alias, other fields kept
    assert h100.price_per_hour == pytest.approx(2.49)
    assert h100.mem_bw_bytes_per_s == pytest.approx(3.35e12)
    assert Catalog().get("h100").price_per_hour != pytest.approx(2.49)  # bundled untouched


def test_environment_variable_adds_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(NEW_DEVICE)
    monkeypatch.setenv("SERVESIM_DEVICES", str(path))
    assert get_device("my_npu").max_power_w == 450


def test_missing_field_names_file_and_device(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(NEW_DEVICE.replace("    mem_bw_gb_s: 2400\n", ""))
    with pytest.raises(ServesimError) as info:
        Catalog([path])
    msg = str(info.value)
    assert "my_npu" in msg and str(path) in msg and "mem_bw_gb_s" in msg


def test_non_numeric_field_names_file_device_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(NEW_DEVICE.replace("mem_gb: 96", "mem_gb: lots"))
    with pytest.raises(ServesimError) as info:
        Catalog([path])
    msg = str(info.value)
    assert "my_npu" in msg and str(path) in msg and "mem_gb" in msg and "'lots'" in msg


def test_bad_peak_dtype_and_negative_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(NEW_DEVICE.replace("fp8: 800", "fp7: 800"))
    with pytest.raises(ServesimError, match=r"my_npu.*peak_tflops has unknown dtype 'fp7'"):
        Catalog([path])
    path.write_text(NEW_DEVICE.replace("price_per_hour: 2.0", "price_per_hour: -1"))
    with pytest.raises(ServesimError, match=r"my_npu.*price_per_hour is -1"):
        Catalog([path])


def test_unknown_field_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(NEW_DEVICE.replace("mem_gb: 96", "mem_gb: 96\n    mem_gbs: 96"))
    with pytest.raises(ServesimError, match=r"my_npu.*unknown field\(s\) mem_gbs"):
        Catalog([path])


def test_bad_yaml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("devices:\n  x: [1, 2\n")
    with pytest.raises(ServesimError) as info:
        Catalog([path])
    msg = str(info.value)
    assert str(path) in msg and "not valid YAML" in msg
    assert "\n" not in msg


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(ServesimError, match="does not exist"):
        Catalog([tmp_path / "nope.yaml"])


def test_every_catalog_number_has_a_source_comment() -> None:
    from importlib import resources

    text = resources.files("servesim").joinpath("data/devices.yaml").read_text(encoding="utf-8")
    numeric = re.compile(r"^\s+(mem_gb|mem_bw_gb_s|num_sms|l2_mb|link_bw_gb_s|price_per_hour):")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if numeric.match(line):
            above = lines[i - 1].strip()
            assert "#" in line or above.startswith("#"), f"no source comment: {line!r}"


def test_a_users_mem_gb_replaces_the_bundled_driver_total(tmp_path) -> None:
    """mem_mib stands for mem_gb; a user file that gives mem_gb for a bundled device with a
    driver figure gets its own number, and one that gives mem_mib gets that."""
    (tmp_path / "gb.yaml").write_text("devices:\n  b200_sxm:\n    mem_gb: 180\n")
    (tmp_path / "mib.yaml").write_text("devices:\n  a10g:\n    mem_mib: 23028\n")
    assert Catalog([tmp_path / "gb.yaml"]).get("b200_sxm").mem_bytes == pytest.approx(180e9)
    assert Catalog().get("b200_sxm").mem_bytes == 183359 * 2**20
    assert Catalog([tmp_path / "mib.yaml"]).get("a10g").mem_bytes == 23028 * 2**20


def test_a_bad_mem_mib_is_named(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("devices:\n  b200_sxm:\n    mem_mib: lots\n")
    with pytest.raises(ServesimError, match="mem_mib"):
        Catalog([tmp_path / "bad.yaml"])


def test_get_device_builds_the_catalog_once_per_set_of_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The predictor looks GPUs up by name on every priced shape, so `get_device` keeps the
    catalog it built (one lookup no longer rebuilds the whole catalog), yet a device file
    edited between lookups, or a new SERVESIM_DEVICES, is read again."""
    import servesim.spec.devices as devices

    built = []
    real_init = Catalog.__init__

    def counting(self, *args, **kw):
        built.append(args)
        real_init(self, *args, **kw)

    monkeypatch.setattr(Catalog, "__init__", counting)
    devices._catalog_of.cache_clear()
    for _ in range(50):
        assert get_device("h100_sxm").name == "h100_sxm"
    assert len(built) == 1
    path = tmp_path / "mine.yaml"
    path.write_text(NEW_DEVICE)
    assert get_device("my_npu", [path]).max_power_w == 450
    path.write_text(NEW_DEVICE.replace("max_power_w: 450", "max_power_w: 451") + "\n")
    assert get_device("my_npu", [path]).max_power_w == 451  # edited: read again
    assert len(built) == 3
    monkeypatch.setenv("SERVESIM_DEVICES", str(path))  # the same file as it stands: its catalog
    assert get_device("my_npu").max_power_w == 451
    assert len(built) == 3
    monkeypatch.setenv("SERVESIM_DEVICES", str(tmp_path / "gone.yaml"))
    with pytest.raises(ServesimError, match="does not exist"):
        get_device("h100_sxm")
