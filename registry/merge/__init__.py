"""Merging: methods, spec parsing, validation plans, the per-tensor engine, writers, model cards, compose and in-memory apply."""
