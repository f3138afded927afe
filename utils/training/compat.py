"""Every touch of a Coqui or torch private name, in one place, with the versions it was written for.

Importing this module checks the installed versions: the names below are not public API and may
change in any release, so a version outside the tested range fails at once with a clear message
instead of deep inside a training step.
"""

from __future__ import annotations

from typing import Any

from utils.errors import ConfigError

# Tested ranges (inclusive lower, exclusive upper), as (major, minor).
TESTED = {"coqui-tts": ((0, 27), (0, 29)), "coqui-tts-trainer": ((0, 3), (0, 5)), "torch": ((2, 8), (2, 13))}


def _version(dist: str) -> tuple[int, int] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version(dist).split("+")[0].split(".")
    except PackageNotFoundError:
        return None
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def check_versions() -> None:
    """Raise :class:`ConfigError` when an installed version is outside the tested range."""
    for dist, (low, high) in TESTED.items():
        found = _version(dist)
        if found is not None and not (low <= found < high):
            raise ConfigError(
                f"{dist} {found[0]}.{found[1]} is installed; the toolkit's adaptations of its private names were written "
                f"for {low[0]}.{low[1]} to before {high[0]}.{high[1]}: install the locked versions (scripts/setup_env.sh)"
            )


check_versions()


def unwrap_model(trainer: Any) -> Any:
    """The model inside a Coqui Trainer (``Trainer._get_model``: the DDP/DataParallel wrapper removed)."""
    return trainer._get_model()
