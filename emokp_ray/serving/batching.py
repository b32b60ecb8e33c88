"""Small load-control pieces of the ingress: the adaptive batch window, the admission limit and the
expected-wait budget.

Plain Python (no Ray, no asyncio), so they are tested on their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class BatchWindow:
    """How long the ingress's `@serve.batch` waits for company after a batch's first image (its
    batch_wait_timeout_s), adapted to load.

    Serve's batcher forms the next batch as soon as the previous one is handed over, with a fixed
    wait; batches then queue for a model call slot (AppArgs.max_concurrent_batches). With a few-ms
    wait that makes batches of 1-2 images under load (measured: 71% of batches held 1-2 requests at
    32 concurrent clients, 5 ms wait). But a batch formed while every slot is busy cannot go before
    one returns, so waiting costs nothing until then: while busy, the window stretches to a batch's
    expected duration (a moving average of past batches, capped at max_s); with a slot free, it is
    idle_s, so a lone request waits only idle_s.
    """

    idle_s: float
    max_s: float
    expected_s: float = 0.0

    def busy_s(self) -> float:
        return max(self.idle_s, min(self.max_s, self.expected_s))

    def record(self, seconds: float) -> None:
        self.expected_s = seconds if self.expected_s == 0.0 else 0.7 * self.expected_s + 0.3 * seconds


class Admission:
    """At most `limit` units (images, or decoded pixels) admitted and not yet released (per ingress
    replica); a request that would pass it is refused at once, whole. The ingress turns a refusal
    into 503 {"error": ...}: Serve's own bounded queues (max_queued_requests) stay behind it as a
    backstop, but the proxy's refusal is plain text."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"admission limit must be >= 1, got {limit}")
        self.limit = limit
        self.pending = 0

    def try_enter(self, units: int = 1) -> bool:
        if units < 0:
            raise ValueError(f"units must be >= 0, got {units}")
        if self.pending + units > self.limit:
            return False
        self.pending += units
        return True

    def leave(self, units: int = 1) -> None:
        self.pending -= units


# Work units of one image for WaitBudget: the image itself, each face the networks see, and each
# million pixels the detector searches (MTCNN searches at full size down to 24 px faces, so its time
# grows with pixels). Relative costs measured in one process (builtin models, torch, one thread,
# best of 5, 2-core VM under load): MTCNN on a 1000x1000 portrait 2,077 ms, one face through both
# networks 40.6 ms in a batch of 32, a lone crop request 63.6 ms: a megapixel ~ 50 faces, an image's
# fixed cost ~ 1 face. WaitBudget measures the seconds per unit; only these ratios are fixed here.
IMAGE_UNITS = 1.0
DETECT_UNITS_PER_MPIXEL = 50.0


def job_units(faces: float, searched_pixels: int = 0) -> float:
    """Work units of one image: IMAGE_UNITS + its faces + the megapixels its detector searches."""
    return IMAGE_UNITS + faces + DETECT_UNITS_PER_MPIXEL * searched_pixels / 1e6


SLOWDOWN_MIN, SLOWDOWN_MAX = 0.5, 20.0  # bounds of one answer's ratio (WaitBudget.answered)


class WaitBudget:
    """Admission by expected wait (AppArgs.max_queue_wait_s), per ingress replica.

    Work is counted in units (`job_units`: images, faces, searched pixels); `seconds_per_unit` is
    measured on every model call (its duration over the units it held, averaged). A request is
    admitted when the units admitted and unanswered plus its own would be done within `budget_s`
    by `concurrency` model calls at once; else it is refused whole, at once. Counting images alone
    let 64 heavy photos in (15-20 s of work); counting their measured work refuses the excess while
    a light request still fits. An idle replica admits anything (a request heavier than the whole
    budget must still be answerable), and nothing is refused before a first call is measured.
    Faces per searched photo are unknown before the model runs: `faces_per_search` (their recent
    average) stands in for them, so face-heavy traffic raises the estimate of what follows.
    A call still running counts too: when the model slows down (a CPU taken by other work), the
    calls that have run longer than their units' worth raise the rate at once, before they end (by
    the least overrun of them: one call whose work was underestimated, a crowd's photo, leaves the
    light requests beside it alone while another call runs on time).

    With C model calls at once, the work ahead of a request (Q units, the largest request L) keeps
    it waiting about min(Q / C, (Q - L) / (C - 1)) units' time: one huge photo occupies one call
    while light requests pass on the others (it alone would read Q / C: a 24 M-pixel photo, a
    minute of MTCNN, would refuse every crop meanwhile); many equal requests share all C. Then the
    request's own work runs on one call: expected wait = (that + its units) x seconds per unit.

    What the model calls do not see (decoding, the proxy, batching, a CPU shared with other work)
    is learnt from the answers: `slowdown`, the recent ratio of a request's real time from admission
    to answer over the model-only estimate made when it was admitted, scales every estimate.
    """

    def __init__(self, budget_s: float | None, concurrency: int, clock: Callable[[], float] = time.perf_counter):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.budget_s = budget_s
        self.concurrency = concurrency
        self.clock = clock
        self.queued = 0.0  # units admitted and not yet answered
        self.admitted: list[float] = []  # each admitted request's units
        self.seconds_per_unit = 0.0  # 0: not measured yet
        self.faces_per_search = 1.0
        self.running: dict[int, tuple[float, float]] = {}  # model call -> (start, its units as estimated)
        self.slowdown = 1.0  # real time from admission to answer / model_wait_s at admission

    def current_seconds_per_unit(self) -> float:
        """The measured rate, or the rate of the calls still running where all run slower."""
        now = self.clock()
        overdue = min(((now - start) / units for start, units in self.running.values() if units > 0), default=0.0)
        return max(self.seconds_per_unit, overdue)

    def model_wait_s(self, units: float = 0.0) -> float:
        """Seconds of model calls until `units` more work would be answered, behind what is admitted now."""
        ahead = self.queued / self.concurrency
        if self.concurrency > 1 and self.admitted:
            ahead = min(ahead, (self.queued - max(self.admitted)) / (self.concurrency - 1))
        return (max(0.0, ahead) + units) * self.current_seconds_per_unit()

    def expected_wait_s(self, units: float = 0.0) -> float:
        """Seconds until `units` more work would be answered: model_wait_s x slowdown."""
        return self.model_wait_s(units) * self.slowdown

    def answered(self, model_wait_s: float, seconds: float) -> None:
        """A request admitted when model_wait_s said `model_wait_s` was answered in `seconds`."""
        if model_wait_s >= 0.01:  # a measured estimate, not the first requests' 0
            ratio = min(SLOWDOWN_MAX, max(SLOWDOWN_MIN, seconds / model_wait_s))
            self.slowdown = 0.8 * self.slowdown + 0.2 * ratio

    def estimate(self, searched_pixels: int) -> float:
        """Units of a photo the detector will search (its faces as the recent average)."""
        return job_units(self.faces_per_search, searched_pixels)

    def fits(self, units: float) -> bool:
        """Whether `units` more work would be admitted now (nothing is reserved)."""
        if units < 0:
            raise ValueError(f"units must be >= 0, got {units}")
        return self.budget_s is None or self.queued <= 0 or self.expected_wait_s(units) <= self.budget_s

    def try_enter(self, units: float) -> bool:
        if not self.fits(units):
            return False
        self.queued += units
        self.admitted.append(units)
        return True

    def leave(self, units: float) -> None:
        """A request admitted with `units` is answered (or failed)."""
        self.queued = max(0.0, self.queued - units)
        if units in self.admitted:
            self.admitted.remove(units)
        if not self.admitted:
            self.queued = 0.0  # no float residue once nothing is admitted

    def call_started(self, key: int, units: float) -> None:
        """Model call `key`, of `units` work as estimated at admission, starts now."""
        self.running[key] = (self.clock(), units)

    def call_done(self, key: int, units: float) -> None:
        """Model call `key` ended; `units`: its work as found (faces known now)."""
        started, _ = self.running.pop(key, (self.clock(), 0.0))
        self.record(self.clock() - started, units)

    def call_failed(self, key: int) -> None:
        self.running.pop(key, None)

    def record(self, seconds: float, units: float) -> None:
        """A model call of `units` work took `seconds`."""
        if units <= 0 or seconds < 0:
            return
        rate = seconds / units
        self.seconds_per_unit = rate if self.seconds_per_unit == 0.0 else 0.7 * self.seconds_per_unit + 0.3 * rate

    def record_faces(self, faces: int) -> None:
        """A searched photo yielded `faces` (those analysed plus those dropped)."""
        self.faces_per_search = 0.8 * self.faces_per_search + 0.2 * faces
