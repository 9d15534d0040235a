"""`servesim split`: one model across heterogeneous devices over a link, as the latency vs
throughput Pareto front of pipeline splits with each device's memory, as TPI-LLM tensor
parallelism with a sliding window of weights, or as a CPU–GPU offload split for a target."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from servesim.cli.output import console
from servesim.errors import ServesimError


def add_split_parser(sub: Any) -> None:
    """Add `split` to servesim's subcommand parsers."""
    p = sub.add_parser(
        "split",
        help="split one model across heterogeneous devices (pipeline Pareto front, TPI-LLM)",
        description="Search where to split a model across devices joined by a link: the "
        "pipeline splits on the latency vs throughput Pareto front (with each device's memory), "
        "or tensor parallelism over identical low-resource devices with a sliding window of "
        "weights read from storage (TPI-LLM).",
    )
    p.add_argument("model", help="bundled model name or a config.json path")
    p.add_argument(
        "--on",
        dest="on",
        required=True,
        help="devices in pipeline order, comma-separated (e.g. jetson_orin,rtx_4090); "
        "tensor mode: one device name",
    )
    p.add_argument(
        "--link",
        help="link between devices (data/links.yaml; default 10gbe, offload: pcie4_x16)",
    )
    p.add_argument("--quant", default="q4_k_m", help="weight recipe: f16, q8_0, q4_k_m, ...")
    p.add_argument("--context", type=int, default=1024, help="tokens of context per sequence")
    p.add_argument(
        "--mode",
        choices=("pipeline", "tensor", "offload"),
        default="pipeline",
        help="pipeline: Pareto front of split points; tensor: TPI-LLM; offload: GPU,CPU hybrid",
    )
    p.add_argument(
        "--target",
        choices=("latency", "throughput"),
        default=None,
        help="offload mode: batch-1 decode latency, or tokens/s of a --prompt-token prefill",
    )
    p.add_argument("--prompt", type=int, default=None, help="offload throughput: prompt tokens")
    p.add_argument("--threads", type=int, default=None, help="offload: CPU threads (0: all cores)")
    p.add_argument("--num-devices", type=int, default=None, help="tensor mode: devices (4)")
    p.add_argument(
        "--window", type=int, default=None, help="tensor mode: layers kept in memory (0: all)"
    )
    p.add_argument(
        "--storage", default=None, help="tensor mode: where weights stream from (nvme_gen4)"
    )
    p.add_argument(
        "--any-order",
        action="store_true",
        help="pipeline mode: also try every order of the devices (default: the order given)",
    )
    p.add_argument("--devices", help="extra device catalog YAML")
    p.add_argument("--links", help="extra links YAML")
    p.add_argument("--json", dest="json_output", action="store_true", help="print one JSON object")


MODE_FLAGS = {
    "tensor": {"num_devices": 4, "window": 0, "storage": "nvme_gen4"},
    "offload": {"target": "latency", "prompt": 2048, "threads": 0},
}


def _check_mode_flags(args: argparse.Namespace) -> None:
    """Refuse flags the chosen mode would ignore, and fill the mode's defaults."""
    if args.any_order and args.mode != "pipeline":
        raise ServesimError("--any-order applies to --mode pipeline only; drop it.")
    if args.mode == "offload" and args.prompt is not None and args.target != "throughput":
        raise ServesimError(
            "--prompt sizes the prefill of --target throughput; the latency target prices one "
            "decode token at --context. Add --target throughput or drop --prompt."
        )
    for mode, flags in MODE_FLAGS.items():
        for name, default in flags.items():
            given = getattr(args, name) is not None
            if given and args.mode != mode:
                flag = "--" + name.replace("_", "-")
                raise ServesimError(
                    f"{flag} applies to --mode {mode} only; drop it or add the mode."
                )
            if not given:
                setattr(args, name, default)


def cmd_split(args: argparse.Namespace) -> int:
    """Run the split search and print the front (or the TPI-LLM plan)."""
    from servesim.planner.split import pareto_front, search_splits, tensor_parallel
    from servesim.spec.devices import catalog
    from servesim.spec.links import get_link
    from servesim.spec.model import load_model
    from servesim.spec.quant import get_quant

    if args.context < 1:
        raise ServesimError(f"--context must be at least 1, got {args.context}.")
    _check_mode_flags(args)
    cat = catalog(args.devices)
    names = [n.strip() for n in args.on.split(",") if n.strip()]
    if not names:
        raise ServesimError("--on needs at least one device name.")
    devices = [cat.get(n) for n in names]
    model = load_model(args.model)
    quant = get_quant(args.quant)
    link = get_link(args.link or ("pcie4_x16" if args.mode == "offload" else "10gbe"), args.links)
    if args.mode == "offload":
        return _offload(args, model, quant, devices, link)
    if args.mode == "tensor":
        if len(devices) != 1:
            raise ServesimError("Tensor mode runs identical devices: give one name to --on.")
        storage = get_link(args.storage, args.links)
        plan = tensor_parallel(
            model, quant, devices[0], args.num_devices, link, storage, args.window, args.context
        )
        doc = {
            "mode": "tensor",
            "model": model.name,
            "device": devices[0].name,
            **plan.__dict__,
            "device_mem_bytes": devices[0].mem_bytes,
            "fits": plan.mem_bytes_per_device <= devices[0].mem_bytes,
        }
        if args.json_output:
            print(json.dumps(doc))
            return 0
        t = Table(title=f"TPI-LLM: {model.name} on {args.num_devices} x {devices[0].name}")
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("latency per token", f"{plan.latency_s * 1e3:,.1f} ms")
        t.add_row(
            "compute / all-reduce / storage reads",
            f"{plan.compute_s * 1e3:,.1f} / "
            f"{plan.allreduce_s * 1e3:,.1f} / {plan.load_s * 1e3:,.1f} ms",
        )
        t.add_row(
            "memory per device",
            f"{plan.mem_bytes_per_device / 1e9:.2f} GB of {devices[0].mem_bytes / 1e9:.0f} GB",
        )
        t.add_row("whole model", f"{plan.model_bytes / 1e9:.1f} GB")
        console.print(t)
        return 0 if doc["fits"] else 1
    splits = search_splits(model, quant, devices, link, args.context, any_order=args.any_order)
    front = pareto_front(splits)
    if args.json_output:
        print(
            json.dumps(
                {
                    "mode": "pipeline",
                    "model": model.name,
                    "devices": names,
                    "link": link.name,
                    "splits_searched": len(splits),
                    "front": [s.as_dict() for s in front],
                }
            )
        )
        return 0
    t = Table(title=f"{model.name} ({quant.name}) over {', '.join(names)} via {link.name}")
    t.add_column("layers per device" + (" (device order varies)" if args.any_order else ""))
    t.add_column("latency (ms/token)", justify="right")
    t.add_column("throughput (tokens/s)", justify="right")
    t.add_column("memory (GB per device)")
    for s in front:
        t.add_row(
            " / ".join(
                f"{n} {d}" if args.any_order else str(n)
                for n, d in zip(s.layers, s.devices, strict=True)
                if n or not args.any_order
            ),
            f"{s.latency_s * 1e3:,.2f}",
            f"{s.tokens_per_s:,.1f}",
            " / ".join(
                f"{m / 1e9:.1f}"
                for n, m in zip(s.layers, s.mem_bytes, strict=True)
                if n or not args.any_order
            ),
        )
    console.print(t)
    console.print(
        f"{len(front)} splits on the Pareto front of {len(splits)} that fit; first row is the "
        "latency-optimal split, last row the throughput-optimal one."
    )
    return 0


def _offload(args: argparse.Namespace, model: Any, quant: Any, devices: list, link: Any) -> int:
    """`--mode offload`: the best CPU–GPU split of `--on GPU,CPU` for the target."""
    from servesim.planner.hybrid import search_hybrid
    from servesim.predictor.device_step import Step

    if len(devices) != 2 or devices[1].kind != "cpu":
        raise ServesimError("Offload mode takes --on GPU,CPU (a GPU, then a CPU device).")
    if args.prompt < 1 or args.threads < 0:
        raise ServesimError("--prompt must be at least 1 and --threads at least 0.")
    gpu, cpu = devices
    step = Step(args.prompt, 1, 0) if args.target == "throughput" else None
    choice = search_hybrid(
        model, quant, gpu, cpu, link, args.target, step, args.context, args.threads
    )
    if args.json_output:
        print(json.dumps({"mode": "offload", "model": model.name, **choice.as_dict()}))
        return 0
    b = choice.best
    t = Table(title=f"{model.name} ({quant.name}) on {gpu.name} + {cpu.name} via {link.name}")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("best", f"{b.mode}, {b.gpu_layers} of {model.num_layers} layers on the GPU")
    t.add_row("seconds per pass", f"{b.seconds * 1e3:,.1f} ms")
    t.add_row("tokens/s", f"{choice.tokens_per_s:,.1f}")
    t.add_row(
        "CPU / GPU / transfer",
        f"{b.cpu_s * 1e3:,.1f} / {b.gpu_s * 1e3:,.1f} / {b.transfer_s * 1e3:,.1f} ms",
    )
    t.add_row("GPU memory", f"{b.gpu_mem_bytes / 1e9:.1f} of {gpu.mem_bytes / 1e9:.0f} GB")
    console.print(t)
    return 0
