"""Run plan evaluations in parallel: local worker processes by default, or a Ray cluster.

Both runners call the same top-level `evaluate.evaluate(spec, candidate)` and hand each row to a
callback the moment it is done (the plan streams it to its store), with a rich progress bar and
ETA. Local workers die with the plan (even a SIGKILLed one); connecting to Ray is bounded in
time, so a wrong address is one clear error rather than minutes of retries. Ray is an optional
extra (`pip install 'servesim[ray]'`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import sys
import threading
import time
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
from servesim.planner.candidates import Candidate, PlanSpec
from servesim.planner.evaluate import evaluate

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


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(1)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(planner_pid: int) -> None:
    """Worker initializer: end this process when the one that started it ends, even by
    SIGKILL (Linux: the kernel's parent-death signal; elsewhere: a watchdog thread)."""
    ppid = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if ppid != planner_pid and not _running(planner_pid):
        os._exit(1)  # the plan was gone before the signal was armed
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True).start()


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
        with ProcessPoolExecutor(
            max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
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


RAY_CONNECT_TIMEOUT_S = 60.0  # a Ray head answers in seconds; a local start takes longer
RAY_LOCAL_START_TIMEOUT_S = 180.0
PROBE_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port` or `ray://host:port`; None for forms such as `auto`."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    return (m.group(1), int(m.group(2))) if m else None


def check_ray_address(address: str) -> None:
    """Refuse a Ray address nothing listens on, within a few seconds."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ServesimError(
            f"No Ray cluster answers at --ray {address} ({why}); start one with `ray start "
            "--head` and pass its address, or use --ray local."
        ) from None


def _init_ray(ray: Any, address: str, num_cpus: int | None) -> threading.Event:
    """ray.init with a time limit (Ray itself retries an unreachable head for many minutes).

    It runs in a thread that stays parked until the returned event is set: Ray ties the
    processes it starts to the life of the thread that started them (PR_SET_PDEATHSIG)."""
    failure: list[BaseException] = []
    ready, release = threading.Event(), threading.Event()

    def connect() -> None:
        try:
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
        ready.set()
        release.wait()

    limit = RAY_LOCAL_START_TIMEOUT_S if address == "local" else RAY_CONNECT_TIMEOUT_S
    threading.Thread(target=connect, name="ray-init", daemon=True).start()
    if not ready.wait(limit):
        raise ServesimError(
            f"Ray at --ray {address} did not answer within {limit:.0f} s; check that it is a "
            "Ray head (`ray start --head`) or use --ray local."
        )
    if failure:
        release.set()
        first = " ".join(str(failure[0]).split())[:200] or type(failure[0]).__name__
        raise ServesimError(f"Cannot start or reach Ray at --ray {address} ({first}).")
    return release


def run_ray(
    spec: PlanSpec,
    candidates: list[Candidate],
    on_result: OnResult,
    address: str = "local",
    num_cpus: int | None = None,
    quiet: bool = False,
) -> None:
    """Evaluate candidates as Ray tasks on `address` ("local" starts a local Ray)."""
    if address != "local":
        check_ray_address(address)
    try:
        import ray
    except ImportError:
        raise ServesimError(
            "--ray needs Ray; install it with pip install 'servesim[ray]'."
        ) from None
    release = None if ray.is_initialized() else _init_ray(ray, address, num_cpus)
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
        if release is not None:
            ray.shutdown()
            release.set()
