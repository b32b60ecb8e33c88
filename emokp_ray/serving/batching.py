"""Two small load-control pieces of the ingress: the adaptive batch window and the admission limit.

Plain Python (no Ray, no asyncio), so they are tested on their own.
"""

from __future__ import annotations

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
