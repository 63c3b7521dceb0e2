"""Tensor files: the dtype table, the safetensors format, checkpoints and ``.bin`` files, fingerprints, fit to a base."""
