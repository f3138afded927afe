"""What every screen's handler shares: one message for any failure, a table's rows from its value."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from utils.errors import ToolkitError

logger = logging.getLogger(__name__)


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into one message in the page (the traceback goes to the server log)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ToolkitError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # an unexpected failure: one line for the page, details in the log
            logger.exception("%s failed", fn.__name__)
            raise gr.Error(
                f"{fn.__name__.replace('_', ' ')} failed: {type(exc).__name__}: {exc}", print_exception=False
            ) from None

    return wrapper


def table_rows(df: Any) -> list[list[Any]]:
    """A Dataframe component's value (pandas or a list of lists) as a list of rows."""
    if df is None:
        return []
    if isinstance(df, pd.DataFrame):
        return df.values.tolist()
    if isinstance(df, dict) and "data" in df:
        return list(df["data"])
    return [list(r) for r in df]
