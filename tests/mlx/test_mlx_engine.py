"""The MLX engine on mlx[cpu], running the Gemma 3 270M weights converted from the GGUF."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from exo_runtime.engine import EngineOptions, GenerationRequest, ModelLoadError, SamplingParams
from exo_runtime.selector import select_engine

pytestmark = pytest.mark.mlx

FRANCE = "The capital of France is"
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
TEMPLATE_MARKERS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>")
# MLX on this CPU runs at ~7 tokens/s: every test keeps its token counts small.
AGREEMENT_TOKENS = 16
# Measured: 15 of the first 16 greedy tokens agree with llama.cpp on FRANCE (float32 weights
# against llama.cpp's quantized kernels; the one difference is a near tie at the last token).
AGREEMENT_FLOOR = 12


def greedy(n: int, **overrides) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, **overrides)


def run_alone(engine, request_id: str, prompt: list[int], params: SamplingParams) -> list:
    engine.submit(GenerationRequest(request_id, prompt, params))
    chunks = []
    while engine.has_work():
        chunks.extend(engine.step())
    return chunks


def test_converted_folder_is_routed_to_mlx_and_carries_what_the_gguf_lacks(gemma_mlx_dir):
    assert select_engine(str(gemma_mlx_dir)) == "mlx"
    config = json.loads((gemma_mlx_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert (config["rope_theta"], config["rope_local_base_freq"]) == (1_000_000.0, 10_000.0)
    assert config["rope_scaling"] is None and config["sliding_window_pattern"] == 6
    assert config["eos_token_id"] == [1, 106]
    tokenizer_config = json.loads((gemma_mlx_dir / "tokenizer_config.json").read_text())
    assert "<start_of_turn>" in tokenizer_config["chat_template"]


def test_converted_tokenizer_tokenizes_like_llamacpp(gemma_gguf, mlx_engine):
    import llama_cpp

    vocab = llama_cpp.Llama(str(gemma_gguf), vocab_only=True, verbose=False)
    texts = [
        FRANCE,
        "  two  spaces   three\ttab\n\n\nnewlines",
        "naïve café — 日本語のテキスト 🤖",
        "<start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n<start_of_turn>model\n",
        "def f(x):\n    return x**2  # 3.14159",
    ]
    for text in texts:
        ours = mlx_engine.tokenize(text, add_special=True)
        theirs = vocab.tokenize(text.encode(), add_bos=True, special=True)
        assert ours == theirs, text
        assert mlx_engine.detokenize(ours) == text.replace("<start_of_turn>", "").replace(
            "<end_of_turn>", ""
        )


def test_greedy_output_agrees_with_llamacpp_on_the_same_weights(gemma_gguf, mlx_engine):
    import llama_cpp

    prompt = mlx_engine.tokenize(FRANCE, add_special=True)
    chunks = run_alone(mlx_engine, "mlx", prompt, greedy(AGREEMENT_TOKENS))
    ours = [c.token_id for c in chunks if c.token_id is not None]

    llm = llama_cpp.Llama(str(gemma_gguf), n_ctx=256, n_threads=2, verbose=False)
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1):
        theirs.append(token)
        if len(theirs) == AGREEMENT_TOKENS:
            break

    agreeing = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"MLX and llama.cpp agree on {agreeing} of the first {AGREEMENT_TOKENS} tokens")
    assert agreeing >= AGREEMENT_FLOOR, (ours, theirs)
    assert "France" in "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "length"


def test_two_sequences_are_decoded_in_the_same_steps(mlx_engine):
    france = mlx_engine.tokenize(FRANCE, add_special=True)
    counting = mlx_engine.tokenize(COUNTING, add_special=True)
    alone = [c.token_id for c in run_alone(mlx_engine, "alone", france, greedy(6))]

    mlx_engine.submit(GenerationRequest("france", france, greedy(6)))
    mlx_engine.submit(GenerationRequest("counting", counting, greedy(8)))
    tokens: dict[str, list] = {"france": [], "counting": []}
    shared_steps = 0
    while mlx_engine.has_work():
        chunks = mlx_engine.step()
        shared_steps += len({c.request_id for c in chunks}) == 2
        for chunk in chunks:
            tokens[chunk.request_id].append(chunk)

    assert shared_steps >= 5, "the two sequences were not decoded together"
    assert [c.token_id for c in tokens["france"]] == alone, "batching changed the output"
    assert len(tokens["counting"]) == 8
    assert "13" in "".join(c.text for c in tokens["counting"])
    assert [tokens[r][-1].finish_reason for r in tokens] == ["length", "length"]


def test_cancel_frees_the_sequence_and_the_other_goes_on(mlx_engine):
    counting = mlx_engine.tokenize(COUNTING, add_special=True)
    mlx_engine.submit(GenerationRequest("keep", counting, greedy(6)))
    mlx_engine.submit(GenerationRequest("drop", counting, greedy(100)))
    mlx_engine.submit(GenerationRequest("never-started", counting, greedy(100)))
    mlx_engine.cancel("never-started")
    seen: dict[str, list] = {"keep": [], "drop": [], "never-started": []}
    steps = 0
    while mlx_engine.has_work():
        steps += 1
        if steps == 3:
            mlx_engine.cancel("drop")
        for chunk in mlx_engine.step():
            seen[chunk.request_id].append(chunk)
        assert steps < 30, "the cancelled sequence kept running"

    assert [c.finish_reason for c in seen["never-started"]] == ["cancelled"]
    assert seen["drop"][-1].finish_reason == "cancelled" and len(seen["drop"]) < 6
    assert len(seen["keep"]) == 6 and seen["keep"][-1].finish_reason == "length"


def test_stop_string_ends_the_sequence_and_is_left_out(mlx_engine):
    prompt = mlx_engine.tokenize(COUNTING, add_special=True)
    chunks = run_alone(mlx_engine, "stop", prompt, greedy(20, stop=(" 15",)))
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop"
    assert "14" in text and "15" not in text, text


@pytest.fixture(scope="module")
def engine_ending_turns_at_newline(gemma_mlx_dir, tmp_path_factory):
    """The converted model with "\\n" declared an end-of-turn id beside <eos> and <end_of_turn>.

    This base model never emits <end_of_turn> (measured: 200 greedy tokens on several chat
    prompts, with llama.cpp as with MLX); it ends its answer line with "\\n" instead. Declaring
    that id in the folder's config, as an instruction-tuned model declares its own, makes the
    engine's end-of-turn path run for real on a real generation.
    """
    from exo_runtime.engines.mlx import load

    folder = tmp_path_factory.mktemp("gemma-newline-ends-turn")
    for item in gemma_mlx_dir.iterdir():
        (folder / item.name).symlink_to(item)
    newline_id = 107
    for name in ("config.json", "generation_config.json"):  # mlx-lm reads the end ids from both
        document = json.loads((gemma_mlx_dir / name).read_text())
        document["eos_token_id"] = [1, 106, newline_id]
        (folder / name).unlink()
        (folder / name).write_text(json.dumps(document))
    engine = load(str(folder), EngineOptions(context_length=512, parallel=2))
    yield engine
    engine.close()


def test_chat_answer_ends_at_the_end_of_the_turn(engine_ending_turns_at_newline):
    from exo_runtime.chat_template import ChatTemplate

    engine = engine_ending_turns_at_newline
    template = engine.embedded_chat_template()
    assert template is not None, "the converted folder carries a chat template"
    prompt_text = ChatTemplate("model", template, **engine.special_tokens()).render(
        [{"role": "user", "content": "Hi"}]
    )
    prompt = engine.tokenize(prompt_text, add_special=False)
    assert prompt[:2] == [2, 105], "one <bos>, then <start_of_turn>"

    chunks = run_alone(engine, "chat", prompt, greedy(24))

    answer = "".join(c.text for c in chunks)
    assert answer.strip(), "the chat answer is empty"
    assert chunks[-1].finish_reason == "stop", answer
    assert chunks[-1].token_id is None, "the end-of-turn token is not part of the answer"
    assert 0 < sum(c.token_id is not None for c in chunks) < 24
    assert not any(marker in answer for marker in TEMPLATE_MARKERS), answer
    assert "\n" not in answer


def test_folder_without_weights_fails_to_load_with_its_path(gemma_mlx_dir, tmp_path):
    from exo_runtime.engines.mlx import load

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(gemma_mlx_dir / "config.json", broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelLoadError, match=re.escape(str(broken))):
        load(str(broken), EngineOptions())


def test_gguf_file_is_refused_by_the_mlx_engine(gemma_gguf):
    from exo_runtime.engines.mlx import load

    with pytest.raises(ModelLoadError, match=r"use the llama\.cpp engine"):
        load(str(gemma_gguf), EngineOptions())


def test_converter_refuses_a_file_that_is_not_gguf(tmp_path):
    from exo_runtime.convert.gguf_to_mlx import main

    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf at all")
    assert main([str(bogus), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_engine_reports_its_model_facts(mlx_engine):
    assert mlx_engine.name == "mlx"
    assert mlx_engine.architecture() == "gemma3"
    assert {1, 106} <= mlx_engine.end_of_turn_token_ids()
    assert mlx_engine.special_tokens() == {"bos_token": "<bos>", "eos_token": "<eos>"}
    assert Path(mlx_engine.model_path).is_dir()
