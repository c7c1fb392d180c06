"""One thread owns the engine; HTTP handlers submit requests and read chunks from asyncio queues.

Handlers never touch the engine: `submit` and `cancel` post to the thread's inbox, and the
thread hands each step's chunks back to the event loop in one `call_soon_threadsafe`. Nothing
holds a lock around the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from exo_runtime.engine import Chunk, Engine, GenerationRequest
from exo_runtime.metrics import RuntimeMetrics

log = logging.getLogger(__name__)

# Clients told to come back later wait about this long; a slot frees every few seconds at most
# once the queue is full.
RETRY_AFTER_SECONDS = 1
# After a failed step the thread waits before the next, doubling up to the cap: a failure that
# repeats must not spin a core and flood the log.
FAILED_STEP_BACKOFF = (0.01, 1.0)


class QueueFullError(RuntimeError):
    """More requests are waiting than `max_queue` allows."""

    retry_after = RETRY_AFTER_SECONDS


@dataclass
class _Stream:
    request: GenerationRequest
    chunks: asyncio.Queue[Chunk]
    arrived: float = field(default_factory=time.perf_counter)
    first_token_seen: bool = False
    choices_left: int = 1  # a request for n choices ends when all n have finished

    def finishes_with(self, chunk: Chunk) -> bool:
        """Count `chunk`'s end; True when it ends the request (every choice done, or a failure,
        which ends the request whole)."""
        if chunk.finish_reason is None:
            return False
        if chunk.finish_reason in ("error", "cancelled"):
            return True
        self.choices_left -= 1
        return self.choices_left <= 0


_STOP = object()
_CANCEL_ALL = object()


class Scheduler:
    """Runs `engine.step()` in a loop on its own thread while any sequence has work."""

    def __init__(
        self,
        engine: Engine,
        *,
        parallel: int,
        max_queue: int,
        metrics: RuntimeMetrics,
        max_failed_steps: int = 3,
    ) -> None:
        self.engine = engine
        self.max_failed_steps = max_failed_steps
        self.failed_steps = 0  # consecutive; written by the scheduler thread only
        self._parallel = parallel
        self._max_queue = max_queue
        self._metrics = metrics
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # touched by the scheduler thread only
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._close_engine = True
        self._thread = threading.Thread(target=self._run, name="exo-scheduler", daemon=True)
        self.idle = asyncio.Event()  # set while nothing is in flight (read by the drain on exit)
        self.idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def failing(self) -> bool:
        """The engine failed `max_failed_steps` steps in a row: /healthz says so."""
        return self.failed_steps >= self.max_failed_steps

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def submit(self, request: GenerationRequest) -> asyncio.Queue[Chunk]:
        """Queue `request`; its chunks arrive on the returned queue. Call on the event loop."""
        with self._count_lock:
            waiting = self._in_flight - self._parallel
            if waiting >= self._max_queue:
                raise QueueFullError(
                    f"{waiting} requests are already waiting (--max-queue {self._max_queue})"
                )
            self._in_flight += 1
        self.idle.clear()
        stream = _Stream(request, asyncio.Queue(), choices_left=request.n)
        self._metrics.prompt_tokens.inc(len(request.prompt_tokens))
        self._inbox.put(stream)
        self._publish_counts()
        return stream.chunks

    def cancel(self, request_id: str) -> None:
        """Free the request's sequence at the next step (a no-op once it has finished)."""
        self._inbox.put(request_id)

    def cancel_all(self) -> None:
        """Cancel every request in flight (the drain ran out of time)."""
        self._inbox.put(_CANCEL_ALL)

    def stop(self, *, close_engine: bool = True) -> None:
        """End the thread after its current step (and close the engine, unless told not to)."""
        self._close_engine = close_engine
        self._inbox.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _publish_counts(self) -> None:
        in_flight = self._in_flight
        self._metrics.active_sequences.set(min(in_flight, self._parallel))
        self._metrics.queue_depth.set(max(0, in_flight - self._parallel))

    def _set_idle_if_empty(self) -> None:
        # Runs on the event loop: a request submitted since the thread saw zero keeps it busy.
        if self._in_flight == 0:
            self.idle.set()

    def _run(self) -> None:
        while True:
            # Block only when there is nothing to step; otherwise take what came in and go on.
            block = not self.engine.has_work()
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    if self._close_engine:
                        self.engine.close()
                    return
                self._apply(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            if self.engine.has_work():
                self._step()

    def _apply(self, item: object) -> None:
        if isinstance(item, _Stream):
            self._streams[item.request.request_id] = item
            try:
                self.engine.submit(item.request)
            except ValueError as err:  # the engine refused the request: end it, keep serving
                self._finish_refused(item, str(err))
        elif item is _CANCEL_ALL:
            for request_id in self._streams:
                self.engine.cancel(request_id)
        elif item in self._streams:
            self.engine.cancel(item)

    def _finish_refused(self, stream: _Stream, reason: str) -> None:
        del self._streams[stream.request.request_id]
        self._metrics.requests.labels("error").inc()
        with self._count_lock:
            self._in_flight -= 1
        self._publish_counts()
        self._loop.call_soon_threadsafe(self._set_idle_if_empty)
        chunk = Chunk(stream.request.request_id, "", finish_reason="error", error=reason)
        self._loop.call_soon_threadsafe(_deliver, [(stream.chunks, chunk)])

    def _step(self) -> None:
        failure: str | None = None
        try:
            chunks = self.engine.step()
        except Exception as err:  # an engine bug must not leave clients waiting forever
            chunks = self._abort_after(err)
            failure = f"{type(err).__name__}: {err}"
        produced = any(c.token_id is not None for c in chunks)
        if failure is None and not produced:
            # A request refused for its own sake (error_param) says nothing of the engine.
            failure = next(
                (c.error for c in chunks if c.finish_reason == "error" and not c.error_param), None
            )
        if failure is not None:
            self._note_failed_step(failure)
        elif produced and self.failed_steps:
            log.warning("engine recovered after %d failed steps", self.failed_steps)
            self.failed_steps = 0
            self._metrics.engine_failing.set(0)
        self._deliver(chunks)
        if failure is not None:
            low, high = FAILED_STEP_BACKOFF
            time.sleep(min(low * 2 ** min(self.failed_steps - 1, 16), high))

    def _abort_after(self, err: Exception) -> list[Chunk]:
        """Fail the sequences the engine had admitted, releasing them so the loop can rest."""
        if self.failed_steps == 0:  # once per run of failures, with its traceback
            log.exception("engine step failed")
        reason = f"engine step failed: {type(err).__name__}: {err}"
        # Releasing them empties the engine, so the loop blocks instead of failing in a spin.
        try:
            request_ids = self.engine.abort_active()
        except Exception:
            log.exception("releasing the failed sequences failed too: ending every request")
            request_ids = list(self._streams)
        # One error per request, though it held several sequences (n > 1).
        unique = dict.fromkeys(request_ids)
        return [Chunk(rid, "", finish_reason="error", error=reason) for rid in unique]

    def _note_failed_step(self, reason: str) -> None:
        self.failed_steps += 1
        self._metrics.failed_steps.inc()
        n = self.failed_steps
        if n & (n - 1) == 0:  # 1, 2, 4, 8...: a repeating failure is logged with its count
            log.error("engine step failed (%d in a row): %s", n, reason)
        if n == self.max_failed_steps:
            log.error("%d engine steps failed in a row: /healthz now answers 503", n)
        if self.failing:
            self._metrics.engine_failing.set(1)

    def _deliver(self, chunks: list[Chunk]) -> None:
        deliveries: list[tuple[asyncio.Queue[Chunk], Chunk]] = []
        finished = 0
        now = time.perf_counter()
        for chunk in chunks:
            stream = self._streams.get(chunk.request_id)
            if stream is None:
                continue
            if chunk.cached_tokens and chunk.index == 0:  # once per request, not per choice
                self._metrics.prompt_tokens_cached.inc(chunk.cached_tokens)
            if chunk.token_id is not None:
                self._metrics.generated_tokens.inc()
                if not stream.first_token_seen:
                    stream.first_token_seen = True
                    self._metrics.time_to_first_token.observe(now - stream.arrived)
            deliveries.append((stream.chunks, chunk))
            if stream.finishes_with(chunk):
                del self._streams[chunk.request_id]
                finished += 1
                outcome = {"cancelled": "cancelled", "error": "error"}.get(
                    chunk.finish_reason, "ok"
                )
                self._metrics.requests.labels(outcome).inc()
                if chunk.finish_reason == "error" and stream.request.n > 1:
                    # A failed choice fails the request: its sibling sequences stop too.
                    self.engine.cancel(chunk.request_id)
        if finished:
            with self._count_lock:
                self._in_flight -= finished
                now_idle = self._in_flight == 0
            self._publish_counts()
            if now_idle:
                self._loop.call_soon_threadsafe(self._set_idle_if_empty)
        if deliveries:
            self._loop.call_soon_threadsafe(_deliver, deliveries)


def _deliver(deliveries: list[tuple[asyncio.Queue[Chunk], Chunk]]) -> None:
    for chunks, chunk in deliveries:
        chunks.put_nowait(chunk)
