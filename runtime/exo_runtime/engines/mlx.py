"""MLX engine over mlx-lm, with continuous batching by mlx-lm's `BatchGenerator`.

`BatchGenerator.next()` prefills newly inserted prompts and advances every decoding sequence
by one token in one batched forward pass: exactly the engine's `step()`. This module keeps
what the generator does not: request ids, cancellation, end-of-turn and stop strings, and
streaming text per sequence.

Prefix cache: a finished sequence's KV cache (the generator hands it back) goes into mlx-lm's
own `LRUPromptCache`; a new prompt takes a copy of the nearest entry, trimmed to the shared
prefix, and the generator prefills only the rest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_logits_processors, make_sampler
from mlx_lm.utils import load_model, load_tokenizer

from exo_runtime.engine import (
    Chunk,
    EngineOptions,
    FinishReason,
    GenerationRequest,
    LoadProgress,
    ModelLoadError,
    SamplingParams,
    check_prompt_tokens,
    context_length_in_use,
    warm_up,
)
from exo_runtime.engines.request_book import RequestBook, end_of_turn_ids
from exo_runtime.prefix_cache import MIN_PREFIX_TOKENS
from exo_runtime.stop_strings import StopStringFilter

log = logging.getLogger(__name__)


@dataclass
class _Sequence:
    """One request inside the batch generator, and its streaming state."""

    request: GenerationRequest
    uid: int
    detokenizer: Any  # mlx-lm's StreamingDetokenizer: bytes of a character split over tokens
    stop_filter: StopStringFilter
    generated: int = 0
    cached_tokens: int | None = 0  # prompt tokens from the prefix cache; told with chunk one
    index: int = 0  # the request's one choice: this engine refuses n > 1


class MlxEngine(RequestBook):
    """A loaded MLX model and its batch generator; driven by one scheduler thread only."""

    name = "mlx"

    def __init__(
        self, model_path: str, model: Any, tokenizer: Any, config: dict, options: EngineOptions
    ) -> None:
        super().__init__()
        self.model_path = model_path
        trained = config.get("max_position_embeddings")
        self.context_length = context_length_in_use(options, trained)
        if trained and self.context_length > trained:
            self.context_length = trained  # positions past the trained ones mean nothing
        self._model = model
        self._tokenizer = tokenizer
        self._config = config
        self._parallel = options.parallel
        # mlx-lm's TokenizerWrapper passes every other attribute on to the Hugging Face
        # tokenizer it wraps (encode, decode, get_vocab, chat_template, ...).
        self._hf = tokenizer
        self.vocab_size = len(tokenizer.get_vocab())
        self._control_ids = {
            token_id
            for token_id, added in tokenizer.backend_tokenizer.get_added_tokens_decoder().items()
            if added.special
        }
        self._end_ids = self._find_end_of_turn_ids()
        self._generator = BatchGenerator(
            model,
            stop_tokens=[[t] for t in sorted(self._end_ids)],
            completion_batch_size=options.parallel,
            prefill_batch_size=options.parallel,
            prefill_step_size=options.batch_size,
        )
        self._active: dict[int, _Sequence] = {}  # by BatchGenerator uid
        entries = options.prefix_cache_entries
        self._prompt_cache = LRUPromptCache(max_size=entries) if entries > 0 else None

    # -- model facts -------------------------------------------------------------------------

    def _find_end_of_turn_ids(self) -> frozenset[int]:
        return end_of_turn_ids(self._tokenizer.eos_token_ids, self._hf.get_vocab().get)

    def embedded_chat_template(self) -> str | None:
        template = getattr(self._hf, "chat_template", None)
        return template if isinstance(template, str) and template else None

    def special_tokens(self) -> dict[str, str]:
        return {"bos_token": self._hf.bos_token or "", "eos_token": self._hf.eos_token or ""}

    def architecture(self) -> str:
        # Text-only Hugging Face configs say "gemma3_text"; the templates know "gemma3".
        return str(self._config.get("model_type", "unknown")).removesuffix("_text")

    def end_of_turn_token_ids(self) -> set[int]:
        return set(self._end_ids)

    def check_grammar(self, grammar: str) -> None:
        # unsupported.py refuses grammar fields for this engine before they get here.
        raise ValueError("the mlx engine does not constrain sampling with a grammar")

    # -- text <-> tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """Tokens for `text`; special-token text such as `<start_of_turn>` becomes that token."""
        return list(self._hf.encode(text, add_special_tokens=add_special))

    def detokenize(self, tokens: list[int]) -> str:
        return self._hf.decode(
            [t for t in tokens if t not in self._control_ids], skip_special_tokens=False
        )

    # -- generation ------------------------------------------------------------------------

    def warmup(self, prompt_tokens: list[int], max_tokens: int) -> None:
        """Generate up to `max_tokens` greedily so every kernel is compiled and run once."""
        warm_up(self, prompt_tokens, max_tokens)

    def submit(self, request: GenerationRequest) -> None:
        check_prompt_tokens(request, self.vocab_size)
        self._waiting.append(request)

    def step(self) -> list[Chunk]:
        chunks = self._drop_cancelled()
        self._admit_waiting()
        if not self._active:
            return chunks
        try:
            responses = self._next_responses()
        except Exception as err:  # an MLX failure ends every sequence, not the process
            return chunks + self._fail_all(f"{type(err).__name__}: {err}")
        for response in responses:
            seq = self._active.get(response.uid)
            if response.finish_reason is not None and response.prompt_cache is not None:
                self._keep(response.all_tokens, response.prompt_cache)
            if seq is not None:
                chunks.append(self._emit(seq, int(response.token), response.finish_reason))
        return chunks

    def _next_responses(self) -> list[Any]:
        _prompt_progress, generated = self._generator.next()
        return generated

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._active) < self._parallel:
            request = self._waiting.popleft()
            params = request.params
            room = max(self.context_length - len(request.prompt_tokens), 1)
            if params.seed is not None:
                # MLX has one global generator: a seed makes a lone request reproducible.
                mx.random.seed(params.seed)
            prompt = list(request.prompt_tokens)
            cache, held = self._nearest_cache(prompt)
            (uid,) = self._generator.insert(
                [prompt[held:]],
                max_tokens=[max(min(params.max_tokens, room), 1)],
                caches=[cache],
                all_tokens=[prompt[:held]],
                samplers=[_sampler(params)],
                logits_processors=[_logits_processors(params)],
            )
            self._active[uid] = _Sequence(
                request=request,
                uid=uid,
                detokenizer=self._tokenizer.detokenizer,
                stop_filter=StopStringFilter(params.stop),
                cached_tokens=held,
            )

    def _nearest_cache(self, prompt: list[int]) -> tuple[Any, int]:
        """A copy of the cache entry sharing the longest prefix with `prompt`, trimmed to it,
        and how many tokens it holds; (None, 0) when none shares enough."""
        if self._prompt_cache is None:
            return None, 0
        cache, rest = self._prompt_cache.fetch_nearest_cache(self.model_path, prompt)
        held = len(prompt) - len(rest)
        if cache is not None and held == len(prompt):
            # The last prompt token is decoded again: its logits give the first new token.
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            held -= 1
        if cache is None or held < MIN_PREFIX_TOKENS:
            return None, 0
        return cache, held

    def _keep(self, tokens: list[int], cache: list[Any]) -> None:
        if self._prompt_cache is not None and len(tokens) >= MIN_PREFIX_TOKENS:
            self._prompt_cache.insert_cache(self.model_path, list(tokens), cache)

    def _emit(self, seq: _Sequence, token: int, finish: str | None) -> Chunk:
        request_id = seq.request.request_id
        cached, seq.cached_tokens = seq.cached_tokens, None
        if token in self._end_ids:
            self._release(seq)
            # The end-of-turn token is not part of the completion: no id, so it is not counted.
            return Chunk(
                request_id, self._flush(seq), None, finish_reason="stop", cached_tokens=cached
            )
        seq.generated += 1
        if token not in self._control_ids:  # turn markers never leak into answers
            seq.detokenizer.add_token(token)
        text, stopped = seq.stop_filter.feed(seq.detokenizer.last_segment)
        reason: FinishReason | None = None
        if stopped:
            reason = "stop"
        elif finish is not None:
            reason = "length"
            text += self._flush(seq)
        if reason is not None:
            self._release(seq)
        return Chunk(request_id, text, token, finish_reason=reason, cached_tokens=cached)

    @staticmethod
    def _flush(seq: _Sequence) -> str:
        seq.detokenizer.finalize()
        return seq.stop_filter.feed(seq.detokenizer.last_segment)[0] + seq.stop_filter.flush()

    def _release(self, seq: _Sequence, *, keep_cache: bool = True) -> None:
        # The generator drops a sequence itself when it finishes (and hands its cache back
        # then); removing it again is harmless.
        keep = keep_cache and self._prompt_cache is not None
        caches = self._generator.remove([seq.uid], return_prompt_caches=keep)
        if seq.uid in caches:
            cache, tokens = caches[seq.uid]
            self._keep(tokens, cache)
        del self._active[seq.uid]

    def _fail_all(self, reason: str) -> list[Chunk]:
        log.error("MLX step failed, ending %d sequences: %s", len(self._active), reason)
        chunks = []
        for seq in list(self._active.values()):
            self._release(seq, keep_cache=False)
            chunks.append(Chunk(seq.request.request_id, "", finish_reason="error", error=reason))
        return chunks

    def abort_active(self) -> list[str]:
        ids = [seq.request.request_id for seq in self._active.values()]
        for seq in list(self._active.values()):
            self._release(seq, keep_cache=False)
        return ids

    def close(self) -> None:
        for seq in list(self._active.values()):
            self._release(seq, keep_cache=False)
        self._generator.close()


def _sampler(params: SamplingParams) -> Any:
    if params.temperature <= 0:
        return make_sampler(0.0)
    return make_sampler(
        params.temperature,
        top_p=params.top_p if params.top_p < 1.0 else 0.0,
        min_p=params.min_p,
        top_k=params.top_k,
    )


def _logits_processors(params: SamplingParams) -> list[Any]:
    """Logit bias and penalties, applied before the sampler (at temperature 0 too)."""
    if not params.transforms_logits:
        return []
    # The window covers the whole answer, as on llama.cpp: OpenAI's penalties count every token.
    return make_logits_processors(
        logit_bias=dict(params.logit_bias) or None,
        repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1 else None,
        repetition_context_size=params.max_tokens,
        presence_penalty=params.presence_penalty or None,
        presence_context_size=params.max_tokens,
        frequency_penalty=params.frequency_penalty or None,
        frequency_context_size=params.max_tokens,
    )


def _read_config(path: Path) -> dict:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError as err:
        raise ModelLoadError(
            f"{path} has no config.json: an MLX model is a folder with config.json, "
            "*.safetensors and the tokenizer files"
        ) from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {config_file}: {err}; fetch the model again") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{config_file} names no model_type: it is not a model config")
    return config


def load(
    model_path: str, options: EngineOptions, progress: LoadProgress | None = None
) -> MlxEngine:
    """Load the MLX model folder `model_path`; raise ModelLoadError with the path and a remedy."""
    path = Path(model_path)
    if not path.is_dir():
        raise ModelLoadError(
            f"{model_path} is not a folder: the MLX engine loads a folder with config.json "
            "and *.safetensors (use the llama.cpp engine for a .gguf file)"
        )
    config = _read_config(path)
    report = progress or (lambda done, total: None)
    report(0, 2)
    try:
        model, config = load_model(path)
        report(1, 2)
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except ModelLoadError:
        raise
    except Exception as err:  # mlx-lm raises many kinds; each means this folder cannot load
        raise ModelLoadError(
            f"MLX cannot load {model_path}: {type(err).__name__}: {err}; check that the "
            "folder is complete (config.json, *.safetensors, tokenizer.json) and that mlx-lm "
            f"supports model_type {config.get('model_type')!r}"
        ) from err
    report(2, 2)
    return MlxEngine(model_path, model, tokenizer, config, options)
