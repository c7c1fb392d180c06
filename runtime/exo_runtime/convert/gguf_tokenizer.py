"""Rebuild a Hugging Face `tokenizer.json` from a SentencePiece-BPE vocabulary stored in a GGUF.

A GGUF keeps the vocabulary, token types and special ids, but no merges: SentencePiece BPE
merges are recovered from the vocabulary itself (every token that splits into two known
tokens is a merge), ranked by the token's position in the vocabulary, which is the order
SentencePiece learnt them in.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

SPACE_MARK = "\u2581"  # SentencePiece's visible space

# llama.cpp's token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GgufVocab:
    tokens: list[str]
    token_types: list[int]
    unk_id: int
    bos_id: int | None  # prepended to every encoding when set (llama.cpp's add_bos_token)


def build_tokenizer(vocab: GgufVocab) -> Tokenizer:
    """A `tokenizers` BPE with byte fallback equivalent to the GGUF's SentencePiece vocabulary."""
    tokens = [_respell(t, kind) for t, kind in zip(vocab.tokens, vocab.token_types, strict=True)]
    ids = {token: index for index, token in enumerate(tokens)}
    model = BPE(
        vocab=ids,
        merges=_merges(tokens, vocab.token_types, ids),
        unk_token=tokens[vocab.unk_id],
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", SPACE_MARK)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # Control tokens (turn markers, BOS) and user-defined ones (runs of newlines, tags) are
    # matched whole in the raw text, as llama.cpp does, before the BPE sees it.
    tokenizer.add_tokens(
        [
            AddedToken(tokens[i], special=kind == CONTROL, normalized=False)
            for i, kind in enumerate(vocab.token_types)
            if kind in (CONTROL, USER_DEFINED)
        ]
    )
    if vocab.bos_id is not None:
        bos = tokens[vocab.bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab.bos_id)]
        )
    return tokenizer


def _respell(token: str, kind: int) -> str:
    # The GGUF stores tokens made only of spaces with real spaces; the BPE sees "▁" for them.
    if kind == NORMAL and token and not token.strip(" "):
        return SPACE_MARK * len(token)
    return token


def _merges(tokens: list[str], kinds: list[int], ids: dict[str, int]) -> list[tuple[str, str]]:
    ranked: list[tuple[int, int, int, str, str]] = []
    for merged_id, (token, kind) in enumerate(zip(tokens, kinds, strict=True)):
        if kind != NORMAL or len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_id, right_id = ids.get(left), ids.get(right)
            if left_id is not None and right_id is not None:
                ranked.append((merged_id, left_id, right_id, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]
