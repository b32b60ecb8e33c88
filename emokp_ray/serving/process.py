"""Settings of a Serve replica's own process: how it shares the CPU, what its garbage collector
walks, and when it hands freed memory back to the OS. Called at the end of a deployment's constructor; no Ray here, so they are tested on their own.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import time
from collections.abc import Callable
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
    request, so a refusal (503) queues behind the model's threads at every hop (the 503 tail at each
    setting: benchmarks/README.md, Serving)."""
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
    but freezes nothing in our ingress (gc.get_freeze_count() stays 0), so every full collection
    walks its ~160,000 startup objects with the event loop stopped, stalling every request in
    flight, refusals included. Idempotent: a second call freezes only what came since."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def fix_mmap_threshold(size: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every allocation of `size` bytes or more with its own mmap, returned to the OS on free.
    glibc's default threshold moves: each large buffer freed raises it (up to 32 MiB), so after a
    24 M-pixel image the next decoded images, resized copies and encoder buffers come from the heap
    arenas and stay there, fragmented; a fixed value keeps them out (setting it stops the moving).
    False where the C library is not glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, size))


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): give every arena's free memory back to the OS (the top of each heap,
    and free pages inside it by madvise). True when some was released; False where the C library
    is not glibc (nothing done)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


class MemoryTrimmer:
    """Trims the heap (malloc_trim) once a replica has been idle `idle_s` seconds after requests.

    Why: a burst of large images leaves a replica's RSS high long after (measured in issue 31: the
    ingress 219 -> ~1,400 MB, the model 464 -> ~1,300 MB, neither coming down while idle). NumPy
    and Pillow buffers are freed, but glibc keeps the freed memory in its arenas (one per thread
    that allocated: decoding and the model run in worker threads) and, once a large buffer has been
    freed, raises its mmap threshold (up to 32 MiB), so later large buffers come from the arenas
    too: replicas that trim also fix the threshold at 1 MiB (fix_mmap_threshold), and malloc_trim
    hands the rest back; run while idle, it delays no request (it takes a few
    ms to tens of ms, in a worker thread). benchmarks/serve_hostile.py --scenario memory measures it."""

    def __init__(self, idle_s: float | None, clock: Callable[[], float] = time.monotonic):
        self.idle_s = idle_s
        self.clock = clock
        self.last_request = clock()
        self.dirty = False  # requests since the last trim
        self.trims = 0
        self._task: asyncio.Task | None = None

    def touch(self) -> None:
        """A request came or went: trim only after idle_s without any."""
        self.last_request = self.clock()
        self.dirty = True

    def due(self, busy: bool) -> bool:
        return self.idle_s is not None and self.dirty and not busy and self.clock() - self.last_request >= self.idle_s

    def start(self, busy: Callable[[], bool]) -> None:
        """Run the idle watch on the running event loop (once; a no-op when idle_s is None).
        `busy()`: whether the replica holds a request now."""
        if self.idle_s is None or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._watch(busy))

    async def _watch(self, busy: Callable[[], bool]) -> None:
        assert self.idle_s is not None
        while True:
            await asyncio.sleep(max(0.05, self.idle_s / 4))
            if self.due(busy()):
                self.dirty = False
                await asyncio.to_thread(malloc_trim)
                self.trims += 1
