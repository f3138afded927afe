"""Recipe: an Amharic voice, 37.7 hours, vocabulary extension.

    python recipes/amharic_37h.py --dataset DATA_DIR --base-model XTTS_V2_DIR [more gpt_train options]

DATA_DIR holds wavs/ + metadata_train.csv + metadata_eval.csv (coqui format). Command-line options
override the recipe's values; --dry-run shows each value's source ("recipe", "cli", table row).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli, gpt_train

RECIPE = {
    "language": "am",  # Amharic normaliser (numbers, Ethiopic numerals, abbreviations) + new vocab
    "dataset_hours": 37.7,  # table row 10-40 h picks lr 1e-5 and weight decay 0.01
    # Vocabulary: the Ge'ez letters (~340, as single characters) plus 2,000 BPE tokens learned
    # from the normalised transcripts, each with its merge (public reports: ~2,000 works best).
    "new_tokens": 2000,
    # 37.7 h at ~7 s per clip ~= 19,400 clips; 3 x 84 = 252 samples per optimizer step
    # -> ~77 optimizer steps per epoch, ~770 in 10 epochs.
    "batch_size": 3,
    "grad_accum": 84,
    "epochs": 10,
    # The first 40 optimizer steps (~half an epoch) train only the new token rows, so the new
    # embeddings settle before they move the pretrained network.
    "new_token_warmup_steps": 40,
    "eval_every_steps": 25,  # ~3 evaluations per epoch feed the plateau scheduler
}


def main(argv: list[str] | None = None) -> int:
    return gpt_train.main(argv, recipe=RECIPE)


if __name__ == "__main__":
    sys.exit(cli.run(main))
