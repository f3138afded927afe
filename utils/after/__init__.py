"""The after-training wing: export, synthesis and its guard, evaluation, and what runs during training.

Modules, each importing only those listed before it (no import circles, public names only, nothing
from the training internals):

- :mod:`utils.after.asr`: the one faster-whisper ``Transcriber`` (data preparation uses it too),
  text normalisation for metrics, CER/WER, aligning ASR word times with a text.
- :mod:`utils.after.quality`: GE2E speaker similarity and DNSMOS (models apart from XTTS).
- :mod:`utils.after.guard`: the generation guard (length cap, tail checks, trimming) and audio levels.
- :mod:`utils.after.reference`: speaker reference clips and the speaker's rate from a run's rows.
- :mod:`utils.after.export`: the compact inference folder.
- :mod:`utils.after.synthesize`: loading a model and speaking through the guard.
- :mod:`utils.after.evaluate`: scoring checkpoints, eval_report.json, the best checkpoint.
- :mod:`utils.after.hooks`: the ToolkitTrainer ``on_evaluation`` hooks (test sentences, quality rows).

Importing the package imports none of them.
"""
