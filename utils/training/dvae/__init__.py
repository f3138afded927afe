"""The DVAE stage: fine-tune XTTS v2's DiscreteVAE (audio -> the GPT's target codes) through Coqui's Trainer.

- ``config.py``: :class:`DVAEStageConfig`, the settings with their sources (pure Python).
- ``trainer_config.py``: the Coqui Trainer config built from them and the base files.
- ``data.py``: fixed-length crops of the clips (training) and windows (evaluation).
- ``model.py``: :class:`ToolkitDVAE`, the Coqui ``TrainerModel`` around ``DiscreteVAE``.
- ``metrics.py``: held-out reconstruction, codebook use and changed codes; the stage's metrics rows.
- ``plots.py``: ``dvae_curves.png``.
- ``stage.py``: :func:`train_dvae`, the entry: train, measure, write ``RUN_DIR/dvae/dvae.pth``.
"""
