"""Run plan evaluations in parallel: local worker processes by default, or a Ray cluster.

Both runners call the same top-level `planner.evaluate(spec, candidate)` and hand each row to a
callback the moment it is done (the plan streams it to its store), with a rich progress bar and
ETA. Ray is an optional extra (`pip install 'servesim[ray]'`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from servesim.errors import ServesimError
from servesim.planner import Candidate, PlanSpec, evaluate

OnResult = Callable[[dict[str, Any]], None]


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]planning"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )


def default_workers() -> int:
    """Worker processes: one per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_local(
    spec: PlanSpec,
    candidates: list[Candidate],
    on_result: OnResult,
    workers: int | None = None,
    quiet: bool = False,
) -> None:
    """Evaluate candidates in worker processes (in-process when workers is 1)."""
    workers = workers or default_workers()
    with _progress(quiet) as bar:
        task = bar.add_task("plan", total=len(candidates))
        if workers == 1 or len(candidates) <= 1:
            for c in candidates:
                on_result(evaluate(spec, c))
                bar.advance(task)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(evaluate, spec, c) for c in candidates}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        on_result(fut.result())
                        bar.advance(task)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise


def run_ray(
    spec: PlanSpec,
    candidates: list[Candidate],
    on_result: OnResult,
    address: str = "local",
    num_cpus: int | None = None,
    quiet: bool = False,
) -> None:
    """Evaluate candidates as Ray tasks on `address` ("local" starts a local Ray)."""
    try:
        import ray
    except ImportError:
        raise ServesimError(
            "--ray needs Ray; install it with pip install 'servesim[ray]'."
        ) from None
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(evaluate)
        refs = [remote.remote(spec, c) for c in candidates]
        with _progress(quiet) as bar:
            task = bar.add_task("plan", total=len(refs))
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    on_result(ray.get(ref))
                    bar.advance(task)
    finally:
        if started:
            ray.shutdown()
