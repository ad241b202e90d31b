"""Shared kernels for directed KV-cache and soft-prefix experiments."""
