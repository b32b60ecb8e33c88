"""Starting or joining Ray quietly: the one place that calls `ray.init`.

Ray's own repeated warnings and progress bars stay in its log files (/tmp/ray/session_*/logs);
the console keeps our one line per epoch and real errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

# Ray Serve's throughput-optimized request path (Ray >= 2.55), read when Serve's processes start:
# Serve's proxy and handles default to its gRPC transport instead of Ray actor calls, user code
# and the router run on each replica's main event loop, request logs are buffered and Serve's logs
# go to its log files only (not stderr): lower latency and more answers under overload, the 503
# tail no better (benchmarks/serve_fast_path.py; figures in benchmarks/README.md). Direct ingress,
# a part of the mode, is turned back: it is a second HTTP server per ingress replica, which drains
# at least 30 s when stopped, and clients come through the proxy anyway. The replicas' gRPC
# receive cap (Ray's default 4 MiB) is raised as a guard only: on one node uploads and handle
# calls do not take the capped channel; across nodes they might. AppArgs' limits bound a message.
SERVE_FAST_PATH_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
}


@contextlib.contextmanager
def _raylet_env(variables: dict[str, str]) -> Iterator[None]:
    """Ray settings as environment variables while ray.init runs (the raylet it starts reads them,
    and every worker inherits them: Ray's job manager passes RAY_worker_niceness the same way), then
    removed again, so they reach only that local cluster. A variable the user set stands."""
    added = {name: value for name, value in variables.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def sigint_handler_kept() -> Iterator[None]:
    """Ray Train's `TorchTrainer.fit()` (2.60) installs a SIGINT handler of its own in the main
    thread and never puts the old one back, so after training in-process, Ctrl-C would call its
    abort on a finished run instead of raising KeyboardInterrupt (which `emokp demo`'s serving
    stage and `emokp serve`'s drain rely on). Put back whatever handler was there before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def init_ray(
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    quiet: bool = True,
    worker_niceness: int | None = None,
) -> None:
    """Connect to the cluster named by RAY_ADDRESS (a Ray Job's driver), or start a local one.

    worker_niceness: the nice value of a local cluster's workers (Ray's default is 15, below the
    raylet's 0); `emokp serve` starts them at 0 so that its model replica can be put below its
    proxy and ingress (AppArgs.model_niceness). A local cluster also gets SERVE_FAST_PATH_ENV.
    Both are ignored when joining a cluster (set them where it starts: jobs/k8s/rayservice.yaml),
    and where the user set the variable.
    Idempotent: a running connection is kept.
    """
    import ray

    if ray.is_initialized():
        return
    if quiet:
        # Read by Ray Data and Ray Train when they start; set before ray.init on purpose.
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Data 2.60 starts 32 Parquet-footer reader actors for every read_parquet execution (each
    # epoch); our data sets are a few files per split, and on small machines those actors cost
    # seconds and crowd out the Train workers. Read by read_parquet on the driver.
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    kwargs: dict[str, Any] = {}
    raylet_env: dict[str, str] = {}  # joining a cluster: its processes are as it started them
    if not os.environ.get("RAY_ADDRESS"):
        raylet_env.update(SERVE_FAST_PATH_ENV)
        if worker_niceness is not None:
            raylet_env["RAY_worker_niceness"] = str(worker_niceness)
        # A machine of our own is not a spot instance: Train's preemption watcher (one more actor
        # polling every 5 s, ~1% of a core) has nothing to watch. Read by the Train controller.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # A local cluster on a small machine: at least 4 logical CPUs, so that 2 Train workers and
        # Ray Data's read/augment tasks can all be scheduled (with 2, they starve each other and hang).
        kwargs.update(num_cpus=num_cpus or max(4, os.cpu_count() or 1), object_store_memory=object_store_memory)
    if quiet:
        logging.getLogger("ray").setLevel(logging.ERROR)
    with _raylet_env(raylet_env):
        ray.init(
            logging_level=logging.ERROR if quiet else logging.INFO,
            # Workers' and actors' output (Train controller chatter, Data progress) stays in Ray's log
            # files; the driver prints one line per epoch from the run's metrics (train.py).
            log_to_driver=not quiet,
            include_dashboard=True,
            **{k: v for k, v in kwargs.items() if v is not None},
        )
    if quiet:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        quiet_ray_loggers()


def quiet_ray_loggers() -> None:
    """Ray's Python loggers at ERROR, as init_ray leaves them. Call it again after a late first
    `import ray.serve`: that import sets Serve's logger back to INFO (its
    configure_default_serve_logger), which then prints "Started Serve ...", "Deleting app ..."."""
    for name in ("ray", "ray.data", "ray.train", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)
