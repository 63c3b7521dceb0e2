"""Shared test helpers, importable as ``helpers.X`` (``pythonpath = ["tests"]`` in pyproject.toml).

Only builders and checks live here; fixtures stay in ``tests/conftest.py`` (or a
folder's own ``conftest.py``), and no test module imports another test module.

- :mod:`helpers.factories` -- tiny Llama-shaped checkpoints and random vectors as real files;
- :mod:`helpers.models` -- tiny transformers models and tokenizers, built offline;
- :mod:`helpers.hubserver` -- a loopback Hugging Face Hub for the real ``huggingface_hub`` client;
- :mod:`helpers.cli` -- running the CLI in-process and checking its one ``error:`` line;
- :mod:`helpers.snapshot` -- everything a failed command must leave unchanged;
- :mod:`helpers.postgres` -- throwaway PostgreSQL databases;
- :mod:`helpers.tensors` -- byte-exact tensor comparison and torch zip re-packing;
- :mod:`helpers.cards` -- Hub model cards with their markers in every state;
- :mod:`helpers.locks` -- ``flock`` probes and holders in a second process;
- :mod:`helpers.paths` -- where the repository is.
"""
