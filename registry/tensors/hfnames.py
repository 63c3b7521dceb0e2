"""File and key names of the Hugging Face formats pvreg reads and writes (and its own files in them), spelled once."""

from __future__ import annotations

#: Weight files a model directory may hold.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
#: (index file, suffix of the shards it names), in order of preference.
INDEXES = ((SAFETENSORS_INDEX, ".safetensors"), (BIN_INDEX, ".bin"))
#: A ``.bin`` beside the weights that is not weights (Trainer's pickled arguments).
NOT_WEIGHTS = frozenset({"training_args.bin"})
CONFIG = "config.json"
MODEL_CARD = "README.md"

#: PEFT adapter directories.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
#: PEFT's ``PeftModel`` wraps the transformers model as ``base_model.model``.
PEFT_PREFIX = "base_model.model."
#: transformers' causal-LM heads keep the decoder under ``model.``.
MODEL_PREFIX = "model."

#: pvreg's record of how a merged model was made, written beside its weights.
COMPOSITION_RECORD = "pvreg-composition.json"
