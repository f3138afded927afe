"""The GPT stage: Coqui's GPTTrainer adapted (model.py), its config (config.py), its data (dataset.py,
clip_cache.py), the packed loss forward (packed.py) and the GPT-specific kernel swaps (kernels.py)."""
