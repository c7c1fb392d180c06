"""Convert a Gemma 3 GGUF into a folder that mlx-lm loads (config, safetensors, tokenizer).

    python -m exo_runtime.convert.gguf_to_mlx MODEL.gguf OUTDIR

Every tensor is dequantized to float32 with the `gguf` package (no torch), renamed to the
Hugging Face layout, and the GGUF's vocabulary becomes a `tokenizer.json`. The folder also
gets a Gemma chat template and both end ids (<eos> and <end_of_turn>), which the GGUF lacks.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file

from exo_runtime.chat_template import GEMMA_TEMPLATE
from exo_runtime.convert.gguf_tokenizer import GgufVocab, build_tokenizer

SUPPORTED_ARCHITECTURES = ("gemma3",)
# Bump when the folder this writes changes, so that caches of older conversions are redone.
OUTPUT_VERSION = 1

# Gemma 3 facts that its GGUF does not carry (llama.cpp hard-codes them for the architecture):
# five sliding-window layers for each global one, and the local layers' rope base.
GEMMA3_SLIDING_WINDOW_PATTERN = 6
GEMMA3_ROPE_LOCAL_BASE_FREQ = 10_000.0
GEMMA3_END_OF_TURN = "<end_of_turn>"

_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


class ConversionError(ValueError):
    """The GGUF cannot be converted; the message names the file and the reason."""


def convert(gguf_path: Path, out_dir: Path) -> Path:
    """Write the MLX folder for `gguf_path` to `out_dir` (replaced atomically); return it."""
    reader = _open(gguf_path)
    fields = _Fields(reader, gguf_path)
    architecture = fields.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"{gguf_path} is a {architecture!r} model; this converter handles "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} only (use the llama.cpp engine for it)"
        )
    vocab = GgufVocab(
        tokens=fields.get("tokenizer.ggml.tokens"),
        token_types=fields.get("tokenizer.ggml.token_type"),
        unk_id=fields.get("tokenizer.ggml.unknown_token_id", 3),
        bos_id=(
            fields.get("tokenizer.ggml.bos_token_id")
            if fields.get("tokenizer.ggml.add_bos_token", True)
            else None
        ),
    )
    end_ids = [fields.get("tokenizer.ggml.eos_token_id"), vocab.tokens.index(GEMMA3_END_OF_TURN)]
    config = gemma3_config(fields, vocab_size=len(vocab.tokens), end_ids=end_ids)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(gemma3_weights(reader), str(work / "model.safetensors"))
        build_tokenizer(vocab).save(str(work / "tokenizer.json"))
        _write_json(work / "config.json", config)
        _write_json(work / "generation_config.json", _generation_config(config))
        _write_json(work / "tokenizer_config.json", _tokenizer_config(fields, vocab))
        # Readable by the runtime's non-root user when the folder sits on a shared volume.
        work.chmod(0o755)
        for file in work.iterdir():
            file.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def gemma3_config(fields: _Fields, *, vocab_size: int, end_ids: list[int]) -> dict[str, Any]:
    """The Hugging Face `gemma3_text` config, with every rope setting written out."""
    arch = "gemma3"
    layers = fields.get(f"{arch}.block_count")
    head_dim = fields.get(f"{arch}.attention.key_length")
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": fields.get(f"{arch}.embedding_length"),
        "intermediate_size": fields.get(f"{arch}.feed_forward_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": fields.get(f"{arch}.attention.head_count"),
        "num_key_value_heads": fields.get(f"{arch}.attention.head_count_kv"),
        "head_dim": head_dim,
        # Gemma 3 scales queries by 1/sqrt(head_dim), as llama.cpp does for this size.
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": fields.get(f"{arch}.attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab_size,
        "max_position_embeddings": fields.get(f"{arch}.context_length"),
        "rope_theta": fields.get(f"{arch}.rope.freq_base"),
        "rope_local_base_freq": GEMMA3_ROPE_LOCAL_BASE_FREQ,
        "rope_scaling": None,
        "sliding_window": fields.get(f"{arch}.attention.sliding_window"),
        "sliding_window_pattern": GEMMA3_SLIDING_WINDOW_PATTERN,
        "layer_types": [
            "full_attention"
            if (i + 1) % GEMMA3_SLIDING_WINDOW_PATTERN == 0
            else "sliding_attention"
            for i in range(layers)
        ],
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": True,
        "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": end_ids,
        "pad_token_id": fields.get("tokenizer.ggml.padding_token_id", 0),
        "torch_dtype": "float32",
    }


def gemma3_weights(reader: GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32 under its Hugging Face name."""
    weights = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        if name.endswith("norm.weight"):
            # llama.cpp stores Gemma's RMSNorm scale as (1 + w); the model code adds the 1.
            array = array - 1.0
        weights[name] = np.ascontiguousarray(array)
    return weights


def _hf_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[base]}.{suffix}"
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_TENSORS:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}.weight"
    raise ConversionError(f"unexpected tensor {gguf_name!r} for a Gemma 3 model")


def _generation_config(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }


def _tokenizer_config(fields: _Fields, vocab: GgufVocab) -> dict[str, Any]:
    def token(key: str) -> str:
        return vocab.tokens[fields.get(f"tokenizer.ggml.{key}")]

    return {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(fields.get("tokenizer.ggml.add_bos_token", True)),
        "add_eos_token": bool(fields.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": fields.get("gemma3.context_length"),
        "chat_template": fields.get("tokenizer.chat_template", None) or GEMMA_TEMPLATE,
    }


class _Fields:
    """Typed access to GGUF metadata, with errors that name the file and the key."""

    _MISSING = object()

    def __init__(self, reader: GGUFReader, path: Path) -> None:
        self._reader, self._path = reader, path

    def get(self, key: str, default: Any = _MISSING) -> Any:
        field = self._reader.fields.get(key)
        if field is None:
            if default is self._MISSING:
                raise ConversionError(f"{self._path} has no {key!r} metadata")
            return default
        return field.contents()


def _open(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except FileNotFoundError as err:
        raise ConversionError(f"{path} does not exist") from err
    except (ValueError, OSError) as err:
        raise ConversionError(f"{path} is not a readable GGUF file: {err}") from err


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exo_runtime.convert.gguf_to_mlx",
        description="Convert a Gemma 3 GGUF into an MLX model folder (float32 weights).",
    )
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("out_dir", type=Path, help="the folder to write (replaced if present)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.gguf, args.out_dir)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: cannot write {args.out_dir}: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
