"""Edge check on this machine: llama.cpp on this CPU against servesim's `this_cpu` prediction.

Builds llama.cpp (llama-bench, llama-quantize) from the llama-cpp-python sdist as
`engines.py` does, writes random-initialised Llama checkpoints of a few sizes (latency depends on
the shapes, not the weights), converts them to GGUF F16 with llama.cpp's converter and quantises
to Q8_0 and Q4_K_M, measures prompt processing and decode tokens/s with 1 and 2 threads
(llama-bench), and compares with `predictor.device_step` for `this_cpu`: from the spec sheet
alone, then after a few-shot fit (`predictor.edge_fit`) on at most 10 of the measurements.

    python validation/edge.py --out runs/edge.json            # the full run
    python validation/edge.py --quick --out /tmp/edge.json    # one tiny model, 1 thread, F16

The machine must be otherwise idle for the figures to mean anything (`engines.wait_idle`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import engines  # noqa: E402

from servesim.cli.settings import check_out_file  # noqa: E402
from servesim.errors import counts, script_exit  # noqa: E402
from servesim.predictor.device_step import Step, decode, prefill  # noqa: E402
from servesim.predictor.edge_fit import Shot, ape, fit_csv, write_shots_csv  # noqa: E402
from servesim.spec.devices import Device, get_device  # noqa: E402
from servesim.spec.model import ModelSpec, load_model  # noqa: E402
from servesim.spec.quant import get_quant  # noqa: E402

SIZES: dict[str, engines.Arch] = {
    "tiny": engines.TINY,  # 256 hidden, 4 layers: ~3M parameters
    "small": engines.SMALL,  # 512 hidden, 8 layers: ~25M
    "medium": engines.Arch(1024, 2816, 16, 8, 2, 4096),  # ~170M
    "large": engines.Arch(2048, 5632, 16, 16, 4, 4096),  # ~700M
}
QUANTS = ("f16", "q8_0", "q4_k_m")
THREADS = (1, 2)
N_PROMPT = 256
N_GEN = 64
# llama-bench's decode test starts from an empty context: the mean context of its steps.
BENCH_DECODE_CONTEXT = N_GEN // 2


def bindir() -> Path:
    return engines.llama_cpp_dir() / "build" / "bin"


def available() -> bool:
    """True when llama-bench and llama-quantize are built."""
    return (bindir() / "llama-bench").is_file() and (bindir() / "llama-quantize").is_file()


def build(say=print) -> Path:
    """Download the llama-cpp-python sdist (pip) and build llama-bench and llama-quantize."""
    if available():
        return bindir()
    src = engines.llama_cpp_dir()
    engines.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    if not src.is_dir():
        say(f"downloading llama-cpp-python {engines.LLAMA_CPP_VERSION} sdist")
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                *(f"llama-cpp-python=={engines.LLAMA_CPP_VERSION}", "-d", str(engines.BUILD_DIR)),
            ],
            check=True,
        )
        sdist = engines.BUILD_DIR / f"llama_cpp_python-{engines.LLAMA_CPP_VERSION}.tar.gz"
        subprocess.run(["tar", "xzf", str(sdist), "-C", str(engines.BUILD_DIR)], check=True)
    say("building llama-bench and llama-quantize (cmake, ~15 min on 2 busy cores)")
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF"]
    flags += ["-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    subprocess.run(["cmake", "-B", "build", *flags], cwd=src, check=True)
    subprocess.run(
        ["cmake", "--build", "build", "-j2", "--target", "llama-bench", "llama-quantize"],
        cwd=src,
        check=True,
    )
    return bindir()


def gguf(model_dir: Path, quant: str) -> Path:
    """The checkpoint as a GGUF in `quant`: F16 from llama.cpp's converter, the others from
    llama-quantize on the F16 file."""
    f16 = model_dir / "model-f16.gguf"
    if not f16.is_file():
        src = engines.llama_cpp_dir()
        env = {**engines.one_thread_env(), "PYTHONPATH": str(src / "gguf-py")}
        subprocess.run(
            [
                *(sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir)),
                *("--outfile", str(f16), "--outtype", "f16"),
            ],
            check=True,
            env=env,
            capture_output=True,
        )
    if quant == "f16":
        return f16
    out = model_dir / f"model-{quant}.gguf"
    if not out.is_file():
        subprocess.run(
            [str(bindir() / "llama-quantize"), str(f16), str(out), quant.upper(), "1"],
            check=True,
            capture_output=True,
        )
    return out


def bench(path: Path, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict[str, float]:
    """llama-bench's prompt-processing and decode tokens/s (mean over `reps`)."""
    cmd = [str(bindir() / "llama-bench"), "-m", str(path), "-t", str(threads)]
    cmd += ["-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    cmd = engines.pinned(cmd, 0) if threads == 1 else cmd
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out: dict[str, float] = {}
    for row in json.loads(res.stdout):
        key = "prefill" if row["n_prompt"] and not row["n_gen"] else "decode"
        out[key] = float(row["avg_ts"])
    return out


@dataclass
class Row:
    """One (size, quant, threads) measured and predicted."""

    size: str
    quant: str
    threads: int
    gguf_bytes: int
    measured_decode: float
    measured_prefill: float
    busy_before: float  # share of the cores other processes kept busy just before measuring
    spec_decode: float = 0.0
    spec_prefill: float = 0.0
    fewshot_decode: float = 0.0
    fewshot_prefill: float = 0.0
    in_fewshot: str = ""  # "decode", "prefill", "both" when used to fit


def _steps(n_prompt: int) -> tuple[Step, Step]:
    return decode(1, BENCH_DECODE_CONTEXT), prefill(n_prompt)


def measure(
    sizes: list[str],
    quants: list[str],
    threads: list[int],
    workdir: Path,
    n_prompt: int = N_PROMPT,
    n_gen: int = N_GEN,
    reps: int = 3,
    wait_s: float = 900.0,
    say=print,
) -> tuple[list[Row], dict[str, ModelSpec]]:
    """Make, convert and bench every (size, quant, threads)."""
    rows: list[Row] = []
    specs: dict[str, ModelSpec] = {}
    for size in sizes:
        mdir = workdir / size
        if not (mdir / "config.json").is_file() or not (mdir / "tokenizer.json").is_file():
            engines.make_model(mdir, SIZES[size])  # imports torch: only when needed
        specs[size] = load_model(str(mdir / "config.json"))
        for q in quants:
            path = gguf(mdir, q)
            for t in threads:
                if wait_s > 0:
                    busy = engines.wait_idle(max_wait_s=wait_s, say=say)
                else:
                    busy = engines.cpu_busy_fraction(1.0)
                r = bench(path, t, n_prompt, n_gen, reps)
                say(f"{size} {q} t={t}: prefill {r['prefill']:.1f} tok/s, decode {r['decode']:.1f}")
                rows.append(Row(size, q, t, path.stat().st_size, r["decode"], r["prefill"], busy))
    return rows, specs


def fewshot_rows(rows: list[Row]) -> list[tuple[Row, str]]:
    """At most 10 measurements to fit on: per quant, decode and prefill of the middle size at 1
    thread; the smallest size's F16 decode (fixed costs dominate it); then decode at the most
    threads on the largest size for F16 and Q4_K_M."""
    sizes = sorted({r.size for r in rows}, key=list(SIZES).index)
    mid = sizes[len(sizes) // 2]
    pick: list[tuple[Row, str]] = []
    t_min = min(x.threads for x in rows)
    for r in rows:
        if r.size == mid and r.threads == t_min:
            pick += [(r, "decode"), (r, "prefill")]
    for r in rows:
        if r.size == sizes[0] != mid and r.threads == t_min and r.quant == "f16":
            pick.append((r, "decode"))
    top_t = max(r.threads for r in rows)
    for r in rows:
        big = r.size == sizes[-1] and r.threads == top_t and r.quant in ("f16", "q4_k_m")
        if big and not any(p is r and k == "decode" for p, k in pick):
            pick.append((r, "decode"))
    return pick[:10]


def shot_rows(picks: list[tuple[Row, str]], config_paths: dict[str, str], n_prompt: int) -> list:
    """The few-shot measurements as `servesim fewshot --shots` CSV rows."""
    out = []
    for r, kind in picks:
        decode_row = kind == "decode"
        out.append(
            {
                "model": config_paths[r.size],
                "quant": r.quant,
                "threads": r.threads,
                "phase": kind,
                "tokens": 1 if decode_row else n_prompt,
                "context": BENCH_DECODE_CONTEXT if decode_row else 0,
                "tokens_per_s": r.measured_decode if decode_row else r.measured_prefill,
            }
        )
    return out


def predict(
    rows: list[Row],
    specs: dict[str, ModelSpec],
    device: Device,
    n_prompt: int,
    config_paths: dict[str, str],
    shots_csv: Path,
) -> dict:
    """Fill the spec-only and few-shot predictions into `rows`; return the fitted efficiency.

    The few-shot measurements are written to `shots_csv` and fitted by `edge_fit.fit_csv`, the
    code path of `servesim fewshot --shots` (the same file given to the command gives the same
    fit)."""
    dec, pre = _steps(n_prompt)
    for r in rows:
        q = get_quant(r.quant)
        m = specs[r.size]
        r.spec_decode = Shot(m, q, dec, r.threads, 1).predicted_tokens_per_s(device)
        r.spec_prefill = Shot(m, q, pre, r.threads, 1).predicted_tokens_per_s(device)
    picks = fewshot_rows(rows)
    shots_csv.parent.mkdir(parents=True, exist_ok=True)
    write_shots_csv(shot_rows(picks, config_paths, n_prompt), shots_csv)
    eff = fit_csv(device, shots_csv).efficiency
    for r, kind in picks:
        r.in_fewshot = "both" if r.in_fewshot and r.in_fewshot != kind else kind
    for r in rows:
        q = get_quant(r.quant)
        m = specs[r.size]
        r.fewshot_decode = Shot(m, q, dec, r.threads, 1).predicted_tokens_per_s(device, eff)
        r.fewshot_prefill = Shot(m, q, pre, r.threads, 1).predicted_tokens_per_s(device, eff)
    return {
        "memory": eff.memory,
        "op_s": eff.op_s,
        "step_s": eff.step_s,
        "compute": eff.compute,
        "gemv": eff.gemv,
        "shots_csv": str(shots_csv),
    }


def summary(rows: list[Row]) -> dict:
    """Per-row errors and the medians the issue asks for (few-shot predictions; spec-only and
    held-out medians beside them)."""

    def med(xs: list[float]) -> float | None:  # None (JSON null) when no row is held out
        return statistics.median(xs) if xs else None

    per = []
    for r in rows:
        d = asdict(r)
        d["spec_decode_ape"] = ape(r.spec_decode, r.measured_decode)
        d["spec_prefill_ape"] = ape(r.spec_prefill, r.measured_prefill)
        d["decode_ape"] = ape(r.fewshot_decode, r.measured_decode)
        d["prefill_ape"] = ape(r.fewshot_prefill, r.measured_prefill)
        per.append(d)
    held_d = [p["decode_ape"] for p in per if p["in_fewshot"] not in ("decode", "both")]
    held_p = [p["prefill_ape"] for p in per if p["in_fewshot"] not in ("prefill", "both")]
    return {
        "rows": per,
        "decode_median_ape": med([p["decode_ape"] for p in per]),
        "prefill_median_ape": med([p["prefill_ape"] for p in per]),
        "decode_median_ape_held_out": med(held_d),
        "prefill_median_ape_held_out": med(held_p),
        "spec_decode_median_ape": med([p["spec_decode_ape"] for p in per]),
        "spec_prefill_median_ape": med([p["spec_prefill_ape"] for p in per]),
    }


def run(args: argparse.Namespace, say=print) -> dict:
    """Build, measure, predict; the result document."""
    build(say)
    t0 = time.time()
    workdir = Path(args.workdir)
    rows, specs = measure(
        args.sizes,
        args.quants,
        args.threads,
        workdir,
        args.n_prompt,
        args.n_gen,
        args.reps,
        args.wait_s,
        say,
    )
    device = get_device(args.device)
    paths = {size: str(workdir / size / "config.json") for size in specs}
    eff = predict(rows, specs, device, args.n_prompt, paths, workdir / "fewshot_shots.csv")
    doc = {
        "device": device.name,
        "llama_cpp": engines.LLAMA_CPP_VERSION,
        "n_prompt": args.n_prompt,
        "n_gen": args.n_gen,
        "fitted_efficiency": eff,
        "seconds": time.time() - t0,
        **summary(rows),
    }
    return doc


def refit(doc: dict, workdir: Path | None = None) -> dict:
    """A saved run's measurements predicted again with the current code (spec-only and few-shot
    through `servesim fewshot`'s path), without measuring again."""
    wd = Path(workdir or engines.BUILD_DIR / "edge_models")
    keep = {f.name for f in Row.__dataclass_fields__.values()} - {
        "spec_decode",
        "spec_prefill",
        "fewshot_decode",
        "fewshot_prefill",
        "in_fewshot",
    }
    rows = [Row(**{k: v for k, v in r.items() if k in keep}) for r in doc["rows"]]
    specs = {r.size: load_model(str(wd / r.size / "config.json")) for r in rows}
    device = get_device(doc["device"])
    paths = {size: str(wd / size / "config.json") for size in specs}
    eff = predict(rows, specs, device, doc["n_prompt"], paths, wd / "fewshot_shots.csv")
    return {**doc, "fitted_efficiency": eff, **summary(rows)}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model, F16, 1 thread, few tokens")
    p.add_argument("--sizes", default="small,medium,large")
    p.add_argument("--quants", default=",".join(QUANTS))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--n-prompt", type=int, default=N_PROMPT)
    p.add_argument("--n-gen", type=int, default=N_GEN)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="this_cpu")
    p.add_argument("--workdir", default=str(engines.BUILD_DIR / "edge_models"))
    p.add_argument("--out", help="write the result JSON here")
    p.add_argument("--wait-s", type=float, default=900.0, help="wait this long for idle cores")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.quants, a.threads = "tiny", "f16", "1"
        a.n_prompt, a.n_gen, a.reps, a.wait_s = 32, 8, 1, 0.0
    a.sizes = [s for s in a.sizes.split(",") if s]
    a.quants = [q for q in a.quants.split(",") if q]
    a.threads = counts(str(a.threads), "--threads", 1)
    if a.out:  # before minutes of measuring, not after
        check_out_file(a.out, "--out")
    bad = [s for s in a.sizes if s not in SIZES] + [q for q in a.quants if q not in QUANTS]
    if bad:
        p.error(f"unknown size or quant {bad}; sizes {list(SIZES)}, quants {list(QUANTS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    doc = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
