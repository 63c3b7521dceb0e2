"""Exports for serving engines: LoRA adapters from registered vectors."""
