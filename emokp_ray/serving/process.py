"""Settings of a Serve replica's own process: how it shares the CPU, and what its garbage collector
walks. Called at the end of a deployment's constructor; no Ray here, so they are tested on their own.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

TASKS = Path("/proc/self/task")  # one entry per thread of this process (Linux)


def _thread_ids() -> list[int]:
    """This process's threads (Linux), or [0] (the calling thread) where /proc has no task list."""
    return [int(t.name) for t in TASKS.iterdir()] if TASKS.is_dir() else [0]


def lower_cpu_priority(increment: int) -> int:
    """Raise the nice value of every thread of this process by `increment` (to at most 19); returns
    the main thread's new value. On Linux the nice value belongs to each thread and a new thread
    inherits its creator's, so every thread in /proc/self/task is reniced: those running now and,
    through them, those started later (torch's pool, asyncio's worker threads)."""
    if increment > 0:
        for tid in _thread_ids():
            try:
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
            except OSError:  # the thread ended meanwhile
                continue
    return os.getpriority(os.PRIO_PROCESS, os.getpid())


def idle_cpu_priority() -> bool:
    """Put every thread of this process under Linux's SCHED_IDLE policy: it runs only on a core that
    no normal-priority thread wants, and a waking normal thread takes the core from it at once. New
    threads inherit the policy from their creator, as they do the nice value. Returns False, changing
    nothing, where the OS has no SCHED_IDLE or refuses it (any process may lower itself to it since
    Linux 2.6.39, but a seccomp profile may forbid the call).

    Why not a nice value alone: a niced thread still keeps the core for its time slice (a few ms)
    when a normal one wakes. Under overload the proxy and the ingress wake several times per
    request, so a refusal (503) queued behind the model's threads at every hop. Measured
    (serve/README.md, 150 arrivals/s on 2 cores): 503 p99 251 ms at nice 5, 77 ms under SCHED_IDLE."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # the calling thread first
    except OSError:
        return False  # not allowed here: the caller falls back to a nice value
    for tid in _thread_ids():
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except OSError:  # the thread ended meanwhile
            continue
    return True


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now (modules, classes, FastAPI's routes, loaded
    weights) into the garbage collector's permanent generation, so later collections walk only what
    requests allocate; returns how many objects are frozen now.

    Ray Serve (2.60) means to do this after a replica's constructor (RAY_SERVE_FREEZE_GC_ON_STARTUP)
    but, measured in our ingress (a probe with gc.callbacks), froze nothing (gc.get_freeze_count()
    0): every full collection there walked ~160,000 startup objects, ~0.1 s of CPU with the event
    loop stopped, every few seconds under load, and each one stalled every request in flight,
    refusals included. Idempotent: a second call freezes only what came since."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
