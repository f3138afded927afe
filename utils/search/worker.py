"""A search worker process: runs trials of one study until the study has enough of them.

    python -m utils.search.worker '{"study_dir": "STUDY_DIR", "trials": 12, "index": 0}'

Started by ``scripts/search_hparams.py --workers N`` / ``--gpus N`` (one per GPU, pinned with
CUDA_VISIBLE_DEVICES), never by hand, so it takes one JSON argument instead of options. The
storage URL, if any, comes in the environment (``XTTS_SEARCH_STORAGE``), not on the command
line, since it may hold a password.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

from utils import cli
from utils.errors import ConfigError

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run trials of the study named in the JSON argument until it has ``trials`` finished ones."""
    from utils.search import storage as st
    from utils.search.runner import STORAGE_ENV, RunOptions, work
    from utils.search.settings import StudyFolder

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        job = json.loads(argv[0])
        folder, trials = StudyFolder(job["study_dir"]), int(job["trials"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{__doc__.splitlines()[2].strip()}: started with {argv!r}") from None
    index = int(job.get("index", 0))
    cli.setup_logging(bool(job.get("verbose")))
    settings = folder.read_settings()
    if settings is None:
        raise ConfigError(f"{folder.root}: no study there (no search.json)")
    options = RunOptions(
        trials=trials,
        storage=os.environ.get(STORAGE_ENV) or None,
        keep_weights=bool(job.get("keep_weights")),
        progress=False,
    )
    study = st.open_study(st.open_storage(options.storage, folder), settings, worker_index=index)
    logger.info("worker %d (%s) on study %s", index, st.worker_id(), settings.name)
    work(study, settings, folder, options)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
