"""A Llama-shaped GGUF with SmolLM2's tokenizer and made-up weights, for speed figures only.

A GPU machine with no network cannot download a real model, and the device's transfer limit
is smaller than any real one worth timing on a GPU. Decode speed does not depend on the weights'
values, only on the shape and the quantisation, so this writes a model of a real shape
(SmolLM2-1.7B's, or SmolLM2-135M's for a quick CPU check) in F16 for `llama-quantize`.

The weights are chosen so that every server does the same work per request: the embeddings
are random and every layer's matrices are tiny, so the residual stream stays the embedding of
the last token, which scores itself highest; greedy decoding repeats the prompt's last token
forever, never ends a turn and always streams exactly `max_tokens` tokens of text.

    python bench/random_gguf.py --vocab-from SmolLM2-135M-Instruct.Q4_1.gguf --out vocab.gguf
    python bench/random_gguf.py --vocab-from vocab.gguf --shape 1.7b --out model-f16.gguf

Without --shape it writes only the tokenizer and metadata (a few MB), which is what travels.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

ARCH = "llama"
LAYER_SCALE = 1e-3  # small enough that 24 layers leave the embedding on top (see above)
# How many distinct values the layer matrices draw from: their values never matter, so a tiled
# block keeps writing a 3 GB model to seconds.
TILE = 1 << 22


@dataclass(frozen=True)
class Shape:
    layers: int
    embedding: int
    feed_forward: int
    heads: int
    kv_heads: int


# SmolLM2's own configurations (config.json of HuggingFaceTB/SmolLM2-135M and -1.7B).
SHAPES = {
    "135m": Shape(layers=30, embedding=576, feed_forward=1536, heads=9, kv_heads=3),
    "1.7b": Shape(layers=24, embedding=2048, feed_forward=8192, heads=32, kv_heads=32),
}
# The keys that describe the weights, rewritten for the new shape rather than copied.
SHAPE_KEYS = {
    f"{ARCH}.block_count",
    f"{ARCH}.embedding_length",
    f"{ARCH}.feed_forward_length",
    f"{ARCH}.attention.head_count",
    f"{ARCH}.attention.head_count_kv",
    f"{ARCH}.rope.dimension_count",
    "general.file_type",
    "general.name",
    "general.size_label",
}


def copy_metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    """Every key of the source but the GGUF header's own and the shape's."""
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in SHAPE_KEYS or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)


def add_shape(writer: GGUFWriter, name: str, shape: Shape) -> None:
    writer.add_name(f"SmolLM2-{name} shape, made-up weights (bench/random_gguf.py)")
    writer.add_size_label(name.upper())
    writer.add_block_count(shape.layers)
    writer.add_embedding_length(shape.embedding)
    writer.add_feed_forward_length(shape.feed_forward)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.embedding // shape.heads)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)


def add_weights(writer: GGUFWriter, shape: Shape, vocab: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tile = (rng.standard_normal(TILE, dtype=np.float32) * LAYER_SCALE).astype(np.float16)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return np.resize(tile, (rows, cols))

    ones = np.ones(shape.embedding, dtype=np.float32)
    embeddings = rng.standard_normal((vocab, shape.embedding), dtype=np.float32)
    writer.add_tensor("token_embd.weight", embeddings.astype(np.float16))
    writer.add_tensor("output_norm.weight", ones, raw_dtype=GGMLQuantizationType.F32)
    kv = shape.embedding // shape.heads * shape.kv_heads
    for i in range(shape.layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones, raw_dtype=GGMLQuantizationType.F32)
        writer.add_tensor(f"{blk}.attn_q.weight", matrix(shape.embedding, shape.embedding))
        writer.add_tensor(f"{blk}.attn_k.weight", matrix(kv, shape.embedding))
        writer.add_tensor(f"{blk}.attn_v.weight", matrix(kv, shape.embedding))
        writer.add_tensor(f"{blk}.attn_output.weight", matrix(shape.embedding, shape.embedding))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones, raw_dtype=GGMLQuantizationType.F32)
        writer.add_tensor(f"{blk}.ffn_gate.weight", matrix(shape.feed_forward, shape.embedding))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(shape.feed_forward, shape.embedding))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(shape.embedding, shape.feed_forward))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-from", type=Path, required=True, help="a llama-architecture GGUF")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="omit: metadata only")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reader = GGUFReader(args.vocab_from)
    arch = reader.fields["general.architecture"].contents()
    if arch != ARCH:
        parser.error(f"--vocab-from: architecture {arch!r}, this writes {ARCH!r} models")
    writer = GGUFWriter(args.out, ARCH)
    copy_metadata(reader, writer)
    if args.shape:
        add_shape(writer, args.shape, SHAPES[args.shape])
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
        add_weights(writer, SHAPES[args.shape], vocab, args.seed)
    else:  # the shape of the source, so that the file is still a valid vocab-only model
        for key in sorted(SHAPE_KEYS - {"general.name", "general.size_label"}):
            field = reader.fields[key]
            writer.add_key_value(key, field.contents(), field.types[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(args.out)


if __name__ == "__main__":
    main()
