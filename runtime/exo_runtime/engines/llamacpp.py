"""llama.cpp engine over llama-cpp-python's low-level API, with continuous batching.

Each request owns a sequence id (a "slot": its KV range and its sampler chain). `step()` builds
one `llama_batch` holding the next token of every decoding sequence plus prompt chunks of newly
admitted ones (up to `batch_size` tokens), calls `llama_decode` once, then samples one token per
sequence whose logits were produced. The same shape as llama.cpp's server loop.

A request for n choices takes n slots: the first prefills the prompt, then its KV cells are
copied into the other n-1 (`llama_memory_seq_cp`), which all sample from the same logits row
and decode on their own from there.

A finished sequence's slot keeps its KV cells as a prefix cache entry (`prefix_cache.py` keeps
the books): a new request whose prompt starts with those tokens takes the slot over (or, when a
free slot is at hand and the entry holds more than the match, gets a copy of its cells), drops
the cells past the shared prefix and prefills only the rest. Entries only ever sit in idle slots,
and a live request that needs a slot evicts the least recently used one: the cache never makes
a request wait or fail.
"""

from __future__ import annotations

import codecs
import ctypes
import heapq
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from exo_runtime import ggml_backends, rpc, rpc_workers
from exo_runtime.engine import (
    Chunk,
    EngineOptions,
    FinishReason,
    GenerationRequest,
    LoadProgress,
    ModelLoadError,
    RequestRefused,
    SamplingParams,
    TokenLogprob,
    check_prompt_tokens,
    context_length_in_use,
    warm_up,
)
from exo_runtime.engines.request_book import RequestBook, end_of_turn_ids
from exo_runtime.ggml_backends import DeviceShare
from exo_runtime.prefix_cache import PrefixCache
from exo_runtime.stop_strings import StopStringFilter
from exo_runtime.structured import MAX_GBNF_NESTING, gbnf_nesting

GGUF_MAGIC = b"GGUF"
# A GGUF header (magic, version, tensor count, metadata count) is 24 bytes; anything shorter
# cannot be a model.
GGUF_MIN_BYTES = 24
log = logging.getLogger(__name__)


# ggml_log_level: 3 warn, 4 error; 5 continues the previous line.
_GGML_WARN, _GGML_ERROR, _GGML_CONT = 3, 4, 5
_last_llama_level = 0
# While a thread checks a grammar, llama.cpp's error lines on that thread are kept here (the
# reason a grammar is refused) instead of logged: a client's bad grammar is not a server error.
_captured_errors = threading.local()
# While a model loads: llama.cpp's lines, kept to read how it placed the weights.
_load_log: list[str] | None = None


@llama_cpp.llama_log_callback
def _llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp's info lines (every tensor, every buffer) would drown the runtime's own log;
    # its warnings and errors say why a load failed, so they go to our log.
    global _last_llama_level
    if level == _GGML_CONT:
        level = _last_llama_level
    _last_llama_level = level
    if _load_log is not None:
        _load_log.append(text.decode("utf-8", errors="replace"))
    if level in (_GGML_WARN, _GGML_ERROR):
        line = text.decode("utf-8", errors="replace").rstrip()
        captured = getattr(_captured_errors, "lines", None)
        if captured is not None:
            captured.append(line)
        elif line:
            log.log(
                logging.ERROR if level == _GGML_ERROR else logging.WARNING, "llama.cpp: %s", line
            )


def _quiet_llama_logs() -> None:
    llama_cpp.llama_log_set(_llama_log, ctypes.c_void_p(0))


@dataclass
class _Sequence:
    """One request's slot: KV positions, sampler chain and streaming state."""

    request: GenerationRequest
    index: int  # the choice this sequence produces
    seq_id: int
    sampler: llama_cpp.llama_sampler_p
    stop_filter: StopStringFilter
    end_ids: frozenset[int]  # the model's end-of-turn ids plus the request's stop_token_ids
    greedy: bool  # a plain argmax of the logits: no sampler call needed
    # llama.cpp's grammar sampler, beside the chain as in llama.cpp's common sampler (freed
    # with the slot): None for an unconstrained sequence.
    grammar: llama_cpp.llama_sampler_p | None = None
    # The other choices of the request, waiting for this one's prompt to be in the KV cache.
    siblings: list[_Sequence] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens already in the KV cache
    # The tokens whose KV cells this sequence holds, position by position: what a prefix cache
    # entry made from it answers for.
    decoded: list[int] = field(default_factory=list)
    # Prompt tokens found in the prefix cache; reported once, with the first chunk.
    cached_tokens: int | None = 0
    n_past: int = 0  # positions used in the KV cache
    next_token: int | None = None  # sampled, not yet decoded
    generated: int = 0
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def prompt_done(self) -> bool:
        return self.prefilled >= len(self.request.prompt_tokens)

    @property
    def key(self) -> tuple[str, int]:
        return (self.request.request_id, self.index)


class LlamaCppEngine(RequestBook):
    """A loaded GGUF model and its context; driven by one scheduler thread only."""

    name = "llamacpp"
    # Set by load(): the weights each device holds (the head's CPU, RPC workers, GPUs) and
    # the CPU backend variant ggml picked for this machine.
    devices: tuple[DeviceShare, ...] = ()
    cpu_variant: str | None = None

    def __init__(
        self,
        model_path: str,
        model: llama_cpp.llama_model_p,
        ctx: llama_cpp.llama_context_p,
        options: EngineOptions,
        context_length: int,
    ) -> None:
        super().__init__()
        self.model_path = model_path
        self.context_length = context_length
        self._model = model
        self._ctx = ctx
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.vocab_size = self._n_vocab
        self._batch_size = options.batch_size
        self._parallel = options.parallel
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        self._batch_tokens = np.ctypeslib.as_array(self._batch.token, shape=(self._batch_size,))
        self._batch_pos = np.ctypeslib.as_array(self._batch.pos, shape=(self._batch_size,))
        self._batch_logits = np.ctypeslib.as_array(self._batch.logits, shape=(self._batch_size,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self._batch_size,))[:] = 1
        self._piece_buffer = ctypes.create_string_buffer(256)
        # Slots holding nothing, a heap: the lowest is handed out first (see `_fill_batch`).
        # Slots holding a prefix cache entry are in `_prefix_cache`.
        self._free_seq_ids = list(range(self._parallel))
        self._prefix_cache = PrefixCache(min(options.prefix_cache_entries, self._parallel))
        # A sliding-window model may overwrite its oldest cells: a prefix is reusable only
        # while the window before it is still held (llama-server's check).
        self._n_swa = llama_cpp.llama_model_n_swa(model)
        self._active: dict[tuple[str, int], _Sequence] = {}
        self._end_ids = self._find_end_of_turn_ids()
        # Built at the first constrained request: the candidate array its samplers run on, and
        # the control tokens a grammar must not see (below).
        self._candidates: np.ndarray | None = None
        self._control_ids: tuple[int, ...] | None = None

    # -- model facts -------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):  # a chat template can be long: ask again with room for all of it
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        text = llama_cpp.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def _find_end_of_turn_ids(self) -> frozenset[int]:
        def single_token_id(marker: str) -> int | None:
            tokens = self.tokenize(marker, add_special=False)
            return tokens[0] if len(tokens) == 1 else None

        eog = (t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t))
        return end_of_turn_ids(eog, single_token_id)

    def embedded_chat_template(self) -> str | None:
        return self._meta("tokenizer.chat_template")

    def special_tokens(self) -> dict[str, str]:
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        eos = llama_cpp.llama_vocab_eos(self._vocab)
        return {
            "bos_token": self._token_text(bos) if bos >= 0 else "",
            "eos_token": self._token_text(eos) if eos >= 0 else "",
        }

    def architecture(self) -> str:
        return self._meta("general.architecture") or "unknown"

    def end_of_turn_token_ids(self) -> set[int]:
        return set(self._end_ids)

    # -- text <-> tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """Tokens for `text`; special-token text such as `<bos>` becomes the special token."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), tokens, capacity, add_special, True
        )
        if n < 0:  # the buffer was too small: -n is the size needed
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), tokens, capacity, add_special, True
            )
        return list(tokens[:n])

    def _piece(self, token: int) -> bytes:
        # special=False: control tokens (turn markers, BOS) render as nothing, so template
        # tokens never leak into answers.
        n = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._piece_buffer, len(self._piece_buffer), 0, False
        )
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            return buf.raw[:n]
        return self._piece_buffer.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", errors="replace")

    # -- generation ------------------------------------------------------------------------

    def warmup(self, prompt_tokens: list[int], max_tokens: int) -> None:
        """Generate up to `max_tokens` greedily so every kernel and buffer is touched once."""
        warm_up(self, prompt_tokens, max_tokens)

    def submit(self, request: GenerationRequest) -> None:
        # An id outside the vocabulary makes llama_decode fail the whole batch (or, past the
        # int32 range, cannot even be put in it): it must never get that far.
        check_prompt_tokens(request, self._n_vocab)
        if not 1 <= request.n <= self._parallel:
            raise ValueError(f"n is {request.n}; this engine runs at most {self._parallel}")
        for token, _bias in request.params.logit_bias:
            if not 0 <= token < self._n_vocab:
                raise ValueError(f"logit_bias names token id {token}, outside the vocabulary")
        if len(request.prompt_tokens) >= self.context_length:
            raise ValueError(
                f"the prompt is {len(request.prompt_tokens)} tokens; the context holds "
                f"{self.context_length}"
            )
        if request.params.grammar is not None:
            self.check_grammar(request.params.grammar)
        self._waiting.append(request)

    def step(self) -> list[Chunk]:
        chunks = self._drop_cancelled()
        self._admit_waiting()
        members: list[_Sequence] = []  # the sequences with tokens in this batch
        try:
            n_tokens, outputs = self._fill_batch(members)
            if n_tokens == 0:
                return chunks
            self._batch.n_tokens = n_tokens
            status = llama_cpp.llama_decode(self._ctx, self._batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}")
        except Exception as err:
            # One batch failed: its sequences end (their KV cells freed), every other goes on.
            return chunks + self._fail(members, f"{type(err).__name__}: {err}")
        for _, seq in outputs:
            if seq.siblings:
                self._start_siblings(seq)
        for batch_index, seq in outputs:
            try:
                chunks.append(self._sample(seq, batch_index))
            except RequestRefused as err:
                chunks += self._fail([seq], str(err), param=err.param)
            except Exception as err:
                chunks += self._fail([seq], f"{type(err).__name__}: {err}")
        return chunks

    def abort_active(self) -> list[str]:
        return [chunk.request_id for chunk in self._fail(list(self._active.values()), "aborted")]

    def _admit_waiting(self) -> None:
        # First come, first served: a request for n choices waits for n slots, free or
        # holding a cache entry (which it evicts).
        while self._waiting and self._idle_slots() >= self._waiting[0].n:
            request = self._waiting.popleft()
            first = self._new_sequence(request, 0, *self._slot_with_prefix(request))
            first.siblings = [
                self._new_sequence(request, i, self._claim_slot()) for i in range(1, request.n)
            ]
            self._active[first.key] = first

    def _idle_slots(self) -> int:
        return len(self._free_seq_ids) + len(self._prefix_cache)

    def _claim_slot(self) -> int:
        """A free slot, or else the least recently used cache entry's, emptied."""
        if self._free_seq_ids:
            return heapq.heappop(self._free_seq_ids)
        slot = self._prefix_cache.pop_oldest()
        llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
        return slot

    def _slot_with_prefix(self, request: GenerationRequest) -> tuple[int, list[int]]:
        """A slot for the request's first choice and the prompt tokens it already holds."""
        prompt = request.prompt_tokens
        match = self._prefix_cache.match(prompt)
        if match is None:
            return self._claim_slot(), []
        if match.entry_length > match.tokens and len(self._free_seq_ids) >= request.n:
            # The entry goes on past the shared prefix and may serve another prompt: copy its
            # cells into a free slot (a whole-stream copy, done at the next decode) and keep it.
            slot = heapq.heappop(self._free_seq_ids)
            llama_cpp.llama_memory_seq_cp(self._memory, match.slot, slot, -1, -1)
            self._prefix_cache.touch(match.slot)
        else:
            slot = match.slot
            self._prefix_cache.take(slot)
        # Partial removal fails on recurrent models; a sliding window may have dropped the
        # cells the tail attends to: then the slot starts empty.
        window_start = max(0, match.tokens - self._n_swa) if self._n_swa > 0 else 0
        if (
            not llama_cpp.llama_memory_seq_rm(self._memory, slot, match.tokens, -1)
            or llama_cpp.llama_memory_seq_pos_min(self._memory, slot) > window_start
        ):
            llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
            return slot, []
        return slot, list(prompt[: match.tokens])

    def _new_sequence(
        self, request: GenerationRequest, index: int, seq_id: int, held: list[int] | None = None
    ) -> _Sequence:
        """A sequence in slot `seq_id`, whose KV cells already hold the prompt's first tokens
        `held` (from the prefix cache)."""
        params = request.params
        held = held or []
        grammar, banned = None, ()
        if params.grammar is not None:
            grammar = _grammar_sampler(self._vocab, params.grammar)
            banned = self._banned_by_grammar()
        return _Sequence(
            request=request,
            index=index,
            seq_id=seq_id,
            sampler=_sampler_chain(params, self._n_vocab, index, banned),
            stop_filter=StopStringFilter(params.stop),
            end_ids=self._end_ids.union(params.stop_token_ids),
            greedy=params.temperature <= 0 and not params.transforms_logits and grammar is None,
            grammar=grammar,
            prefilled=len(held),
            n_past=len(held),
            decoded=held,
            cached_tokens=len(held),
        )

    def check_grammar(self, grammar: str) -> None:
        llama_cpp.llama_sampler_free(_grammar_sampler(self._vocab, grammar))

    def _banned_by_grammar(self) -> tuple[int, ...]:
        """Control tokens that do not end a generation (`<|im_start|>`, `<repo_name>`): the
        grammar sampler reads them as their literal text, which a JSON string allows, while
        the answer shows them as nothing. A constrained sequence never draws them."""
        if self._control_ids is None:
            vocab, control = self._vocab, llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
            self._control_ids = tuple(
                t
                for t in range(self._n_vocab)
                if llama_cpp.llama_vocab_get_attr(vocab, t) & control
                and not llama_cpp.llama_vocab_is_eog(vocab, t)
            )
        return self._control_ids

    def _sample_constrained(
        self, seq: _Sequence, grammar: llama_cpp.llama_sampler_p, batch_index: int
    ) -> int:
        """llama.cpp's common sampler, in Python: draw with the chain alone, keep the token if
        the grammar allows it, else draw again with the grammar applied first. The grammar then
        checks one token on most steps instead of the whole vocabulary, which is what keeps a
        constrained sequence from slowing its batch. A grammar allowing no token at all ends
        the sequence with an error (llama.cpp's accept would abort the process)."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, batch_index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = self._draw(seq.sampler, logits)
        if token is None or not _grammar_allows(grammar, token):
            token = self._draw(seq.sampler, logits, first=grammar)
            if token is None:
                raise RequestRefused(
                    f"{seq.request.params.grammar_field}: the grammar allows no token after "
                    f"{seq.generated} generated tokens (it needs text this model's vocabulary "
                    "cannot produce)",
                    seq.request.params.grammar_field,
                )
        if token not in seq.end_ids:
            llama_cpp.llama_sampler_accept(grammar, token)
            llama_cpp.llama_sampler_accept(seq.sampler, token)
        return token

    def _draw(
        self,
        chain: llama_cpp.llama_sampler_p,
        logits: np.ndarray,
        first: llama_cpp.llama_sampler_p | None = None,
    ) -> int | None:
        """The token `chain` (after `first`) picks from every token's logit, without accepting
        it; None when every token is forbidden."""
        if self._candidates is None:
            self._candidates = np.zeros(
                self._n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)]
            )
        candidates = self._candidates
        candidates["id"] = np.arange(self._n_vocab, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        if first is not None:
            llama_cpp.llama_sampler_apply(first, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            return None
        chosen = array.data[array.selected]
        return int(chosen.id) if math.isfinite(chosen.logit) else None

    def _start_siblings(self, seq: _Sequence) -> None:
        """The prompt is decoded for `seq`: its siblings get a copy of its KV cells and go on
        from the same logits row (llama.cpp copies the cells at the next decode)."""
        for sibling in seq.siblings:
            llama_cpp.llama_memory_seq_cp(self._memory, seq.seq_id, sibling.seq_id, -1, -1)
            sibling.prefilled = seq.prefilled
            sibling.n_past = seq.n_past
            sibling.decoded = list(seq.decoded)
            sibling.cached_tokens = seq.cached_tokens
            self._active[sibling.key] = sibling
        seq.siblings = []

    def _fill_batch(self, members: list[_Sequence]) -> tuple[int, list[tuple[int, _Sequence]]]:
        """Next token of every decoding sequence first, then prompt chunks in the room left
        (first come, first served); laid out in the batch in slot order."""
        planned: list[tuple[_Sequence, list[int]]] = []
        room = self._batch_size
        for seq in self._active.values():
            if seq.next_token is not None:
                planned.append((seq, [seq.next_token]))
                room -= 1
        for seq in self._active.values():
            if room <= 0:
                break
            if not seq.prompt_done:
                chunk = seq.request.prompt_tokens[seq.prefilled : seq.prefilled + room]
                planned.append((seq, chunk))
                room -= len(chunk)
        # With one KV stream per sequence, llama.cpp cuts a batch into ubatches of consecutive,
        # increasing sequence ids only (split_equal, sequential): busy slots kept low by the
        # free heap and listed in slot order decode as one ubatch, not one per break.
        planned.sort(key=lambda entry: entry[0].seq_id)
        batch, n = self._batch, 0
        outputs: list[tuple[int, _Sequence]] = []
        tokens, positions, logits = self._batch_tokens, self._batch_pos, self._batch_logits
        for seq, chunk in planned:
            members.append(seq)
            take = len(chunk)
            tokens[n : n + take] = chunk
            positions[n : n + take] = np.arange(seq.n_past, seq.n_past + take)
            logits[n : n + take] = 0
            seq_ids = batch.seq_id
            for i in range(n, n + take):
                seq_ids[i][0] = seq.seq_id
            seq.decoded.extend(chunk)
            seq.n_past += take
            n += take
            if seq.next_token is not None:  # a decoding sequence
                seq.next_token = None
                logits[n - 1] = 1
                outputs.append((n - 1, seq))
                continue
            seq.prefilled += take
            if seq.prompt_done:
                logits[n - 1] = 1
                outputs.append((n - 1, seq))
                outputs.extend((n - 1, sibling) for sibling in seq.siblings)
        return n, outputs

    def _sample(self, seq: _Sequence, batch_index: int) -> Chunk:
        request_id, index = seq.request.request_id, seq.index
        cached, seq.cached_tokens = seq.cached_tokens, None  # told once, with the first chunk
        want_logprobs = seq.request.params.logprobs
        row = None
        if seq.greedy or want_logprobs is not None:
            # The raw logits row, read in place (the samplers copy it; nothing writes it).
            pointer = llama_cpp.llama_get_logits_ith(self._ctx, batch_index)
            row = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        if seq.greedy:
            # argmax over the logits row: the same token the greedy sampler picks, without
            # copying the whole vocabulary into a candidate array each step.
            token = int(row.argmax())
        elif seq.grammar is not None:
            token = self._sample_constrained(seq, seq.grammar, batch_index)
        else:
            token = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, batch_index)
        if token in seq.end_ids:
            text = seq.stop_filter.flush() + seq.decoder.decode(b"", final=True)
            self._release(seq)
            # The end-of-turn token is not part of the completion: no id, so it is not counted.
            return Chunk(
                request_id, text, None, finish_reason="stop", index=index, cached_tokens=cached
            )
        logprob = None
        if want_logprobs is not None:
            logprob = self._token_logprob(row, token, want_logprobs)
        seq.generated += 1
        text, stopped = seq.stop_filter.feed(seq.decoder.decode(self._piece(token)))
        finish: FinishReason | None = None
        if stopped:
            finish = "stop"
        elif seq.generated >= seq.request.params.max_tokens or seq.n_past >= self.context_length:
            finish = "length"
            text += seq.stop_filter.flush() + seq.decoder.decode(b"", final=True)
        if finish is not None:
            self._release(seq)
        else:
            seq.next_token = token
        return Chunk(
            request_id,
            text,
            token,
            finish_reason=finish,
            index=index,
            logprob=logprob,
            cached_tokens=cached,
        )

    def _token_logprob(self, row: np.ndarray, token: int, top: int) -> TokenLogprob:
        """log-softmax of the raw logits row at `token`, and the `top` likeliest tokens."""
        peak = float(row.max())
        log_total = peak + float(np.log(np.exp(row - peak).sum(dtype=np.float64)))
        likeliest: tuple[tuple[bytes, float], ...] = ()
        if top > 0:
            ids = np.argpartition(row, -top)[-top:]
            ids = ids[np.argsort(-row[ids], kind="stable")]
            likeliest = tuple((self._piece(int(t)), float(row[t]) - log_total) for t in ids)
        return TokenLogprob(self._piece(token), float(row[token]) - log_total, likeliest)

    def _release(self, seq: _Sequence, *, keep_cells: bool = True) -> None:
        """Free the sequence's slot, and its siblings' if they never started; the sequence's
        KV cells stay as a prefix cache entry unless `keep_cells` is false (a failed decode
        leaves them in doubt)."""
        for done in [seq, *seq.siblings]:
            llama_cpp.llama_sampler_free(done.sampler)
            if done.grammar is not None:
                llama_cpp.llama_sampler_free(done.grammar)
            self._active.pop(done.key, None)
        for sibling in seq.siblings:  # never started: their slots hold nothing
            self._free_slots([sibling.seq_id])
        seq.siblings = []
        if keep_cells:
            self._free_slots(self._prefix_cache.store(seq.seq_id, seq.decoded))
        else:
            self._free_slots([seq.seq_id])

    def _free_slots(self, slots: list[int]) -> None:
        for slot in slots:
            llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
            heapq.heappush(self._free_seq_ids, slot)

    def _fail(self, seqs: list[_Sequence], reason: str, param: str | None = None) -> list[Chunk]:
        """End `seqs` with an error chunk each, freeing their slots and KV cells; `param` names
        the request field to blame when the request, not the engine, is at fault."""
        chunks = []
        for seq in seqs:
            if seq.key in self._active:
                self._release(seq, keep_cells=False)
            chunks.append(
                Chunk(
                    seq.request.request_id,
                    "",
                    finish_reason="error",
                    error=reason,
                    error_param=param,
                    index=seq.index,
                )
            )
        return chunks

    def close(self) -> None:
        for seq in list(self._active.values()):
            self._release(seq)
        if self._ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._ctx = None


def _grammar_sampler(vocab: llama_cpp.llama_vocab_p, grammar: str) -> llama_cpp.llama_sampler_p:
    """llama.cpp's grammar sampler for GBNF `grammar` (start rule `root`); ValueError with
    llama.cpp's reason when it does not parse."""
    if "\0" in grammar:
        raise ValueError("the grammar holds a NUL character, which GBNF text cannot")
    if (nesting := gbnf_nesting(grammar)) > MAX_GBNF_NESTING:
        raise ValueError(
            f"the grammar nests groups {nesting} deep; at most {MAX_GBNF_NESTING} are parsed"
        )
    _captured_errors.lines = []
    try:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        errors = [line for line in _captured_errors.lines if line]
    finally:
        _captured_errors.lines = None
    if not sampler:
        reason = "; ".join(errors[:2]) or "llama.cpp refused it"
        raise ValueError(f"the grammar is not GBNF llama.cpp accepts: {reason}")
    return sampler


def _grammar_allows(grammar: llama_cpp.llama_sampler_p, token: int) -> bool:
    """Whether `grammar`, in its current state, lets `token` come next (end of generation
    included: allowed only once the grammar is complete)."""
    single = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    array = llama_cpp.llama_token_data_array(data=single, size=1, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
    return math.isfinite(single[0].logit)


def _sampler_chain(
    params: SamplingParams,
    n_vocab: int,
    index: int,
    banned: tuple[int, ...] = (),
) -> llama_cpp.llama_sampler_p:
    """llama.cpp's own order: bans, logit bias, penalties, top-k, top-p, min-p, temperature,
    then a draw seeded per choice (`seed + index`, so the choices differ); greedy at
    temperature 0. A grammar runs beside the chain (`_sample_constrained`)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if banned:
        bans = (llama_cpp.llama_logit_bias * len(banned))(
            *(llama_cpp.llama_logit_bias(t, -math.inf) for t in banned)
        )
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(banned), bans))

    if params.logit_bias:
        biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
            *(llama_cpp.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
        )
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
    if params.has_penalties:
        # The window covers the whole answer: OpenAI's penalties count every generated token.
        add(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                params.max_tokens,
                params.repetition_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    if params.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(llama_cpp.llama_sampler_init_temp(params.temperature))
    # No seed: LLAMA_DEFAULT_SEED, with which llama.cpp draws a random one.
    seed = (
        llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else (params.seed + index) & 0xFFFFFFFF
    )
    add(llama_cpp.llama_sampler_init_dist(seed))
    return chain


def _check_model_file(model_path: str) -> None:
    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(
            f"model file {model_path} does not exist or is not a file: check the path and "
            "that the model volume is mounted"
        )
    try:
        with path.open("rb") as f:
            header = f.read(GGUF_MIN_BYTES)
    except OSError as err:
        raise ModelLoadError(
            f"cannot read model file {model_path}: {err.strerror}; check its permissions"
        ) from err
    if header[:4] != GGUF_MAGIC:
        raise ModelLoadError(
            f"{model_path} is not a GGUF file (it does not start with 'GGUF'): give a .gguf "
            "model, or convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if len(header) < GGUF_MIN_BYTES:
        raise ModelLoadError(f"{model_path} is truncated ({len(header)} bytes): download it again")


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load(
    model_path: str, options: EngineOptions, progress: LoadProgress | None = None
) -> LlamaCppEngine:
    """Load `model_path` (a GGUF file); raise ModelLoadError with the file and a remedy."""
    global _load_log
    _check_model_file(model_path)
    _quiet_llama_logs()
    ggml_backends.load_dynamic_backends()
    llama_cpp.llama_backend_init()
    cpu_variant = ggml_backends.cpu_variant()
    log.info(
        "llama.cpp CPU backend: %s (%s)",
        cpu_variant or "built-in",
        ggml_backends.cpu_backend_file() or "none loaded",
    )
    boots = _add_rpc_workers(options)

    model_params = llama_cpp.llama_model_default_params()
    if options.gpu_layers is not None:
        model_params.n_gpu_layers = options.gpu_layers
    else:
        # -1 offloads every layer to the workers and GPUs; with neither, say 0 to be plain.
        offload = options.rpc_workers or ggml_backends.has_local_gpu()
        model_params.n_gpu_layers = -1 if offload else 0
    split = None
    if options.tensor_split:
        max_devices = llama_cpp.llama_max_devices()
        if len(options.tensor_split) > max_devices:
            raise ModelLoadError(
                f"--tensor-split names {len(options.tensor_split)} devices but this llama.cpp "
                f"build supports {max_devices}: give at most {max_devices} shares"
            )
        split = (ctypes.c_float * max_devices)(*options.tensor_split)
        model_params.tensor_split = split

    # llama.cpp reports load progress as a fraction; we pass it on as percent done.
    def on_progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
        if progress is not None:
            progress(round(fraction * 100), 100)
        return True

    callback = llama_cpp.llama_progress_callback(on_progress)
    model_params.progress_callback = callback
    _load_log = []
    try:
        model = llama_cpp.llama_model_load_from_file(model_path.encode(), model_params)
        load_lines, _load_log = _load_log, None
    finally:
        _load_log = None
    if not model:
        raise ModelLoadError(
            f"llama.cpp could not load {model_path}: the file is truncated, corrupt or of an "
            "architecture this llama.cpp does not know; download it again or update the runtime"
        )

    threads = options.threads or _default_threads()
    context_length = context_length_in_use(options, llama_cpp.llama_model_n_ctx_train(model))
    ctx_params = llama_cpp.llama_context_default_params()
    # One KV stream per sequence, each `context_length` long: a request never runs out of
    # room because of its neighbours (llama-server's layout with --parallel N).
    ctx_params.n_ctx = context_length * options.parallel
    ctx_params.n_seq_max = options.parallel
    ctx_params.kv_unified = False
    ctx_params.n_batch = options.batch_size
    ctx_params.n_ubatch = min(options.batch_size, 512)
    ctx_params.n_threads = threads
    ctx_params.n_threads_batch = threads
    ctx_params.no_perf = True
    # llama_context_default_params() keeps full-size sliding-window caches, llama-server does
    # not: with one KV stream per sequence, full-size SWA cells made every batched decode of a
    # sliding-window model (Gemma 3) attend over far more cells, ~1.5x slower at 8 sequences.
    ctx_params.swa_full = options.swa_full
    ctx = llama_cpp.llama_init_from_model(model, ctx_params)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise ModelLoadError(
            f"llama.cpp loaded {model_path} but could not create a context of "
            f"{ctx_params.n_ctx} tokens ({options.parallel} x {context_length}): lower "
            "--context-length or --parallel, or give the pod more memory"
        )
    engine = LlamaCppEngine(model_path, model, ctx, options, context_length)
    engine.devices = tuple(ggml_backends.weights_per_device(load_lines))
    engine.cpu_variant = cpu_variant
    log.info(
        "weights per device: %s",
        ", ".join(
            f"{d.name}{f' ({d.endpoint})' if d.endpoint else ''} {d.bytes / 2**20:.1f} MiB"
            for d in engine.devices
        ),
    )
    if boots:
        rpc_workers.watch_workers(boots, _exit_for_lost_worker)
    return engine


def _exit_for_lost_worker(endpoint: rpc_workers.Endpoint, why: str) -> None:
    """A worker gone holds layers no other process has: the head cannot compute any more.

    Exit at once, so that the kubelet restarts the head, which waits for the worker (made again
    under its stable name) and loads onto it. llama.cpp would abort on the next token anyway,
    or, with a worker restarted meanwhile, compute with layers that are no longer there.
    """
    line = rpc_workers.lost_worker_line(endpoint, why)
    log.error("%s", line)
    print(line, file=sys.stderr, flush=True)
    os._exit(1)


def _add_rpc_workers(options: EngineOptions) -> dict[rpc_workers.Endpoint, str]:
    """Wait for every RPC worker to answer, then make each a device llama.cpp loads onto;
    return each worker's boot id, to notice later that it restarted."""
    if not options.rpc_workers:
        return {}
    endpoints = [rpc_workers.parse_endpoint(text) for text in options.rpc_workers]
    rpc_workers.wait_for_workers(endpoints, options.rpc_connect_timeout)
    boots = {}
    for endpoint in endpoints:
        try:
            boots[endpoint] = rpc_workers.boot_id(endpoint)
        except OSError as err:
            raise ModelLoadError(
                f"rpc worker unreachable: {endpoint}: its health endpoint (port "
                f"{rpc_workers.health_port(endpoint)}) did not answer: {err}"
            ) from err
    for endpoint in endpoints:
        # A worker that dies between its HELLO and here aborts the process in llama.cpp:
        # the pod restarts and waits again.
        names = rpc.add_worker(endpoint)
        log.info("rpc worker %s: device %s", endpoint, ", ".join(names) or "already added")
    return boots
