"""Coqui's Weights & Biases and MLflow loggers, adapted where they lose or scatter a run's values.

One module per tracker, each imported only for its ``--logger`` choice (Coqui's modules import the
tracker at import time, so a user needs only the tracker they use).
:mod:`utils.training.dashboard` builds them and wraps them like every other logger.
"""
