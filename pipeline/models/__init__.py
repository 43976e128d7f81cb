"""BLIP-2 models: pure PyTorch + transformers (no Ray here)."""
