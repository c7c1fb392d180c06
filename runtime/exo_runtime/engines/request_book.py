"""What both engines keep of their requests between steps, and how they know a turn's end.

The scheduler thread submits and cancels; each `step()` first drops what was cancelled since
the last one, then admits waiting requests. The engines differ in how a sequence is run and
released, not in this bookkeeping, so it lives here once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from exo_runtime.engine import Chunk, GenerationRequest

# Markers that end an assistant turn in the chat formats we know; looked up in the vocabulary
# because some models do not flag them as end-of-generation (a config may list only its plain
# EOS). The start of a new turn ends the answer too: base models often open the next turn
# without closing their own.
END_OF_TURN_MARKERS = (
    "<end_of_turn>",
    "<start_of_turn>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|im_end|>",
    "<|im_start|>",
    "<|end|>",
    "<|endoftext|>",
)


def end_of_turn_ids(
    end_of_generation: Iterable[int], single_token_id: Callable[[str], int | None]
) -> frozenset[int]:
    """The model's own end-of-generation ids, plus each marker that is one token of its
    vocabulary (`single_token_id` gives its id, or None)."""
    ids = set(end_of_generation)
    for marker in END_OF_TURN_MARKERS:
        token = single_token_id(marker)
        if token is not None:
            ids.add(token)
    return frozenset(ids)


class _Running(Protocol):
    request: GenerationRequest

    @property
    def index(self) -> int: ...


class RequestBook:
    """The waiting queue, the cancellations asked for since the last step, and the sequences
    running (keyed as each engine likes); `_release` is the engine's own."""

    def __init__(self) -> None:
        self._waiting: deque[GenerationRequest] = deque()
        self._cancelled: set[str] = set()
        self._active: dict[Any, Any] = {}

    def cancel(self, request_id: str) -> None:
        self._cancelled.add(request_id)

    def has_work(self) -> bool:
        return bool(self._waiting or self._active or self._cancelled)

    def _release(self, seq: Any) -> None:
        raise NotImplementedError

    def _drop_cancelled(self) -> list[Chunk]:
        """End every sequence and waiting request cancelled since the last step."""
        if not self._cancelled:
            return []
        chunks = []
        running: list[_Running] = list(self._active.values())
        for seq in [s for s in running if s.request.request_id in self._cancelled]:
            self._release(seq)
            chunks.append(
                Chunk(seq.request.request_id, "", finish_reason="cancelled", index=seq.index)
            )
        for request in [r for r in self._waiting if r.request_id in self._cancelled]:
            self._waiting.remove(request)
            chunks.append(Chunk(request.request_id, "", finish_reason="cancelled"))
        self._cancelled.clear()
        return chunks
