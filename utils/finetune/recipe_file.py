"""Recipe files: a recipe layer as JSON, each value with the source ``--dry-run`` shows for it.

    python utils/gpt_train.py --recipe STUDY_DIR/best.json --dataset DATA --base-model XTTS_DIR

A hyperparameter search writes its best trial this way (``scripts/search_hparams.py``); any
person or tool may write one. The format::

    {"values": {"lr": {"value": 2.1e-05, "source": "search my_voice trial 7, eval loss 3.412"},
                "epochs": 6},
     "about": {...anything the writer wants to keep beside the values...}}

A value is either ``{"value": V, "source": S}`` or ``V`` alone (its source is then "recipe FILE").
The values are a layer under the command line, like a recipe module's ``RECIPE`` dictionary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.fs import write_json_atomic


@dataclass(frozen=True)
class RecipeFile:
    """The values of a recipe file, the source of each, and what else the file keeps."""

    path: Path
    values: dict[str, Any]
    sources: dict[str, str]
    about: dict[str, Any] = field(default_factory=dict)


def read_recipe_file(path: str | os.PathLike[str]) -> RecipeFile:
    """Read a recipe file (see the module docstring).

    Raises:
        ConfigError: the file is missing, not JSON, or not in the recipe format.
    """
    path = Path(path)
    fix = "give a file written by scripts/search_hparams.py (STUDY_DIR/best.json) or in its format"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--recipe {path}: no such file; {fix}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--recipe {path}: cannot read it as JSON ({exc}); {fix}") from None
    entries = data.get("values") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f'--recipe {path}: no "values" object; {fix}')
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, entry in entries.items():
        if isinstance(entry, dict):
            if "value" not in entry:
                raise ConfigError(f'--recipe {path}: {name} has no "value"; {fix}')
            value, source = entry["value"], entry.get("source")
        else:
            value, source = entry, None
        values[name] = tuple(value) if isinstance(value, list) else value
        sources[name] = str(source) if source else f"recipe {path.name}"
    about = data.get("about") if isinstance(data.get("about"), dict) else {}
    return RecipeFile(path, values, sources, dict(about))


def write_recipe_file(
    path: str | os.PathLike[str],
    values: Mapping[str, Any],
    sources: Mapping[str, str],
    about: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``values`` with their ``sources`` as a recipe file (written whole, then renamed into place)."""
    entries = {
        name: {"value": list(value) if isinstance(value, tuple) else value, "source": sources[name]}
        for name, value in values.items()
    }
    return write_json_atomic(path, {"values": entries, "about": dict(about or {})})
