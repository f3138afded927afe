"""XTTS v2 fine-tuning toolkit: data preparation, training, export and evaluation."""
