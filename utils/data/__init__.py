"""Dataset pipeline: audio I/O, transcription, subtitle import, merge, split, preflight, stats.

Nothing here imports training code or needs a GPU (transcription uses one when present).
"""
