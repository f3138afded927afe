"""Shared command-line plumbing: logging set-up and turning ToolkitError into exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from utils.errors import ToolkitError

logger = logging.getLogger(__name__)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr in one plain format (stdout stays free for machine-readable output)."""
    root = logging.getLogger()
    if any(getattr(h, "_xtts_toolkit", False) for h in root.handlers):
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._xtts_toolkit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of each write (a notebook or a test may replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a ToolkitError becomes one line on stderr and its exit code."""
    try:
        return main(argv)
    except ToolkitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
