"""Vector sources: turning files (a delta, θ+/θ− checkpoints, a fine-tune, LoRA adapters, pvreg exports) into stored blobs."""
