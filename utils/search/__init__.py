"""Hyperparameter search: an Optuna study of short fine-tunes that measures the LR on your data.

    from utils.search import RunOptions, SearchRequest, continue_search, start_search
    outcome = start_search(
        SearchRequest(out=Path("studies/my_voice"), dataset=Path("data/my_voice"), base_model=Path("xtts_v2")),
        RunOptions(trials=12),
    )
    outcome.best_path  # STUDY_DIR/best.json: python utils/gpt_train.py --recipe STUDY_DIR/best.json ...

Each trial is a :class:`utils.finetune.FineTune` run in its own folder under ``STUDY_DIR/trials``
(sharing the clip and compile caches there); an event subscriber reports each evaluation's eval
loss to the trial and stops the run when the pruner says so. Modules: ``space`` (what is
searched), ``settings`` (a study's definition and folder), ``storage`` (journal file or
database, interrupted trials), ``trial`` (one run), ``runner`` (the loop, worker processes),
``report`` (best.json, summary) and ``plots``.
"""

from utils.search.report import SearchOutcome, TrialRow
from utils.search.runner import RunOptions, continue_search, start_search
from utils.search.settings import SearchRequest, SearchSettings, StudyFolder
from utils.search.space import SEARCHABLE, Param, SearchSpace

__all__ = [
    "SEARCHABLE",
    "Param",
    "RunOptions",
    "SearchOutcome",
    "SearchRequest",
    "SearchSettings",
    "SearchSpace",
    "StudyFolder",
    "TrialRow",
    "continue_search",
    "start_search",
]
