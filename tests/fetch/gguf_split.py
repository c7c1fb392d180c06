"""Split a GGUF into PREFIX-0000i-of-0000N.gguf parts, as llama.cpp's gguf-split does, with the
`gguf` package's own writer (its split_max_tensors); llama.cpp reads the split.* keys it writes."""

from __future__ import annotations

from pathlib import Path

import gguf


def split_gguf(source: Path, first_part: Path, parts: int) -> list[Path]:
    """Write `source`'s metadata and tensors into `parts` files named after `first_part`'s
    prefix (PREFIX.gguf -> PREFIX-00001-of-0000N.gguf, ...); return their paths."""
    reader = gguf.GGUFReader(source)
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    per_part = -(-len(reader.tensors) // parts)
    writer = gguf.GGUFWriter(first_part, architecture, split_max_tensors=per_part)
    for field in reader.fields.values():
        # The writer adds the architecture and the GGUF.* header fields itself.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    for tensor in reader.tensors:
        data = tensor.data
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    stem = first_part.name.removesuffix(".gguf")
    names = (f"{stem}-{i:05d}-of-{parts:05d}.gguf" for i in range(1, parts + 1))
    return [first_part.with_name(name) for name in names]
