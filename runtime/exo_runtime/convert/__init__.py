"""Offline model conversions (GGUF to an MLX folder)."""
