"""The engine interface shared by llama.cpp and MLX (exo's builder/engine shape).

A scheduler thread owns one engine and is the only caller of `submit`, `cancel`
and `step`; HTTP handlers never touch it. `step()` advances every active
sequence by one token, so both engines batch concurrent requests by
construction (continuous batching).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled", "error"]

# Called while loading with (done, total) in whatever unit the engine knows
# (tensors or layers); the runtime turns it into a fraction for /readyz and logs.
LoadProgress = Callable[[int, int], None]


# The cap on a model's trained context when no context length is given: 4096 tokens per
# sequence keeps the KV cache of 8 parallel sequences of a small model within a few hundred MiB.
DEFAULT_MAX_CONTEXT_LENGTH = 4096


def context_length_in_use(options: EngineOptions, trained: int | None) -> int:
    """The context a sequence gets: the one asked for, else the trained one within the cap."""
    if options.context_length is not None:
        return options.context_length
    if not trained or trained <= 0:
        return options.max_context_length
    return min(trained, options.max_context_length)


@dataclass(frozen=True)
class EngineOptions:
    """Engine tuning from the CLI (and so from the ExoModel's `engineArgs`)."""

    # Tokens per sequence. None: the model's trained context, capped at `max_context_length`
    # (each of `parallel` sequences gets a KV cache this long, so the cap bounds the memory).
    context_length: int | None = None
    max_context_length: int = DEFAULT_MAX_CONTEXT_LENGTH
    gpu_layers: int | None = None  # None: all layers when a GPU is present, else 0
    tensor_split: tuple[float, ...] = ()  # share of the model per GPU, for several GPUs
    threads: int | None = None  # None: the CPUs this process may use
    batch_size: int = 512
    parallel: int = 8  # most sequences decoded together; more wait in the queue
    # Finished sequences whose KV cells are kept for a later prompt with the same start; they
    # sit in idle slots only, so at most `parallel` of them. 0 turns the prefix cache off.
    prefix_cache_entries: int = 8
    # Keep a sliding-window model's KV cells outside the window (llama.cpp's swa_full): a
    # prefix longer than the window can then be reused, at the cost of slower batched decode.
    swa_full: bool = False
    # llama.cpp RPC workers ("host:port") the model is split across; the head loads only
    # once every one answers, waiting up to `rpc_connect_timeout` seconds.
    rpc_workers: tuple[str, ...] = ()
    rpc_connect_timeout: float = 300.0


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Token ids that end the sequence besides the model's own end-of-turn tokens (not counted,
    # not shown), as vLLM's `stop_token_ids`.
    stop_token_ids: tuple[int, ...] = ()
    top_k: int = 0  # 0: every token stays a candidate
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # vLLM's: divides a seen token's positive logit
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    # None: no log probabilities; k: the chosen token's, plus the k most likely alternatives.
    logprobs: int | None = None
    # GBNF text whose start rule is `root` (structured.py builds it from a JSON schema): the
    # sequence's tokens are drawn only from what the grammar allows, and it ends only once the
    # grammar is complete.
    grammar: str | None = None
    grammar_field: str = "grammar"  # the request field it came from, for the client's error

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or (
            self.repetition_penalty != 1.0
        )

    @property
    def transforms_logits(self) -> bool:
        """Something changes the logits before the choice, so greedy is not a plain argmax."""
        return self.has_penalties or bool(self.logit_bias)


@dataclass
class GenerationRequest:
    """One sequence to generate: the prompt is already templated and tokenized."""

    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1  # choices: sequences sharing the prompt, each sampled on its own


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the raw logits, and the likeliest tokens'."""

    token: bytes  # the token's bytes (a character may be split over several tokens)
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()  # most likely first


@dataclass(frozen=True)
class Chunk:
    """What one `step()` produced for one sequence.

    `text` is the newly decoded text (possibly empty while a multi-byte
    character is incomplete); `finish_reason` is set on the sequence's last chunk.
    `index` is the choice (0 .. n-1); `logprob` is set when the request asked for them.
    `cached_tokens`, on a sequence's first chunk only, is how many prompt tokens came from the
    prefix cache instead of being prefilled.
    """

    request_id: str
    text: str
    token_id: int | None = None
    finish_reason: FinishReason | None = None
    error: str | None = None
    # Set when the request itself cannot be served (a grammar no token satisfies): the error is
    # the client's, a 400 naming this field, and says nothing of the engine's health.
    error_param: str | None = None
    index: int = 0
    logprob: TokenLogprob | None = None
    cached_tokens: int | None = None


class RequestRefused(ValueError):
    """The request cannot be served as asked, found only while generating; names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class ModelLoadError(RuntimeError):
    """The model file cannot be loaded: the message names the file and what to do."""


class EngineLoader(Protocol):
    """Each engine module exposes `load(model_path, options, progress) -> Engine`."""

    def __call__(
        self, model_path: str, options: EngineOptions, progress: LoadProgress | None = None
    ) -> Engine: ...


class Engine(Protocol):
    name: str  # "llamacpp" or "mlx"
    model_path: str
    context_length: int
    vocab_size: int  # valid token ids are 0 .. vocab_size - 1

    def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def embedded_chat_template(self) -> str | None:
        """The Jinja chat template the model carries, if any."""
        ...

    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token strings for rendering chat templates."""
        ...

    def architecture(self) -> str:
        """The architecture name (e.g. "gemma3"): picks a template when the model carries none."""
        ...

    def end_of_turn_token_ids(self) -> set[int]:
        """Token ids that end a generation (EOS and end-of-turn markers)."""
        ...

    def check_grammar(self, grammar: str) -> None:
        """Raise ValueError, saying why, unless `grammar` is GBNF this engine can sample with.
        Reads the vocabulary only, so it may run off the scheduler thread."""
        ...

    def warmup(self, prompt_tokens: list[int], max_tokens: int) -> None:
        """Run one short generation synchronously, before the scheduler starts."""
        ...

    def submit(self, request: GenerationRequest) -> None:
        """Queue `request`; raise ValueError (refusing only it) if it cannot be served, e.g. a
        token id outside the vocabulary, which must never reach the model.

        A request with `n` > 1 yields chunks for choices 0 .. n-1, each ending with its own
        finish_reason; an error or cancellation may end only one of them (the scheduler then
        ends the request)."""
        ...

    def cancel(self, request_id: str) -> None:
        """Free the sequence at the next step; its last chunk says "cancelled"."""
        ...

    def has_work(self) -> bool: ...

    def step(self) -> list[Chunk]:
        """Advance every active sequence by one token (prefilling new ones first).

        A batch that fails ends its own sequences (released, with an error chunk each) and
        no others; raising is for bugs, which the scheduler answers with `abort_active`.
        """
        ...

    def abort_active(self) -> list[str]:
        """Release every admitted sequence after a step raised; return their request ids.

        Waiting requests stay queued: they were in no batch.
        """
        ...

    def close(self) -> None: ...


def warm_up(engine: Engine, prompt_tokens: list[int], max_tokens: int) -> None:
    """Generates up to `max_tokens` greedily through the engine's own submit/step loop, so every
    kernel and buffer is touched once; an error chunk raises RuntimeError."""
    engine.submit(
        GenerationRequest(
            "warmup", list(prompt_tokens), SamplingParams(max_tokens=max_tokens, temperature=0)
        )
    )
    while engine.has_work():
        for chunk in engine.step():
            if chunk.finish_reason == "error":
                raise RuntimeError(f"warmup failed: {chunk.error}")


def check_prompt_tokens(request: GenerationRequest, vocab_size: int) -> None:
    """Raise ValueError unless the prompt is non-empty and every id is in the vocabulary."""
    if not request.prompt_tokens:
        raise ValueError("a generation request needs at least one prompt token")
    for i, token in enumerate(request.prompt_tokens):
        if not 0 <= token < vocab_size:
            raise ValueError(
                f"prompt token {i} is id {token}, outside the vocabulary (0 to {vocab_size - 1})"
            )
