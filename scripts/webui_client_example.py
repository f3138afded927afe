"""Drive a running web UI from Python with gradio_client: prepare data, train, read the status.

    python scripts/webui.py &                                        # the server
    python scripts/webui_client_example.py http://127.0.0.1:7860/ --epochs 1
    XTTS_WEBUI_AUTH=alice:s3cret python scripts/webui_client_example.py http://HOST:7860/

It copies the bundled demo data, checks it, shows the hyperparameters, changes ``epochs`` in
that table, starts training on the tiny demo base, and reads the live status every few seconds
until the training ends; the last status goes to stdout. Every endpoint has a stable name
(``Client(URL).view_api()`` lists them with their parameters): ``/use_demo``, ``/upload``,
``/prepare``, ``/show_hyperparameters``, ``/start_training``, ``/train_status``,
``/stop_training``, ``/continue_training``, ``/speak``, ``/evaluate``, ``/export`` ...
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli
from utils.errors import ConfigError
from utils.webui.access import AUTH_ENV, parse_user_pass
from utils.webui.engine import TINY_BASE  # the Train screen's first base model choice

logger = logging.getLogger("scripts.webui_client_example")

ENDED = re.compile(r"^training: (finished|stopped|failed|interrupted|killed)", re.M)


def train_through_api(
    url: str,
    *,
    epochs: int,
    auth: tuple[str, str] | None = None,
    base: str = TINY_BASE,
    timeout_s: float = 900.0,
    poll_s: float = 2.0,
) -> str:
    """Prepare the demo data, train ``epochs`` epochs and return the live status once training ended.

    Raises:
        ConfigError: the server refused a step (its one-line message), or training outlived ``timeout_s``.
    """
    from gradio_client import Client

    client = Client(url, auth=auth, verbose=False)
    dataset, message = _call(client, "/use_demo", "en")
    dataset = _value(dataset)  # a dropdown's new state: {"choices": [...], "value": ..., "__type__": "update"}
    logger.info("%s", message)
    summary = _call(client, "/prepare", dataset, "en")[0]
    logger.info("%s", summary.strip("*").split("\n")[0])
    table = _call(client, "/show_hyperparameters", dataset, base, "")  # {"headers": [...], "data": [...]}
    table["data"] = [[n, str(epochs) if n == "epochs" else v, s] for n, v, s in table["data"]]
    message = _call(client, "/start_training", dataset, base, "en", "", "api_run", table)[0]  # message, run, study
    logger.info("%s", message)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = str(_call(client, "/train_status", "")[0])  # the first of six outputs: the live status
        if ENDED.search(status):
            return status
        logger.info("%s", " | ".join(status.splitlines()[:2]))
        time.sleep(poll_s)
    raise ConfigError(f"training did not end within {timeout_s:.0f} s; stop it with /stop_training")


def _value(output: Any) -> Any:
    """The value of an output that updates a component (choices and value), else the output itself."""
    return output.get("value") if isinstance(output, dict) and output.get("__type__") == "update" else output


def _call(client: Any, api_name: str, *args: Any) -> Any:
    """One endpoint; the server's one-line message becomes a ConfigError (exit code 2)."""
    from gradio_client.exceptions import AppError

    try:
        return client.predict(*args, api_name=api_name)
    except AppError as exc:
        raise ConfigError(f"{api_name}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="webui_client_example.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("url", help="the web UI's address, e.g. http://127.0.0.1:7860/")
    p.add_argument("--epochs", type=int, default=1, help="epochs to train (default 1: 5 steps of the demo data)")
    p.add_argument("--base", default=TINY_BASE, help="base model as the Train screen lists it (default: tiny)")
    args = p.parse_args(argv)
    cli.setup_logging()
    login = os.environ.get(AUTH_ENV)
    auth = parse_user_pass(login, AUTH_ENV) if login else None
    status = train_through_api(args.url, epochs=args.epochs, auth=auth, base=args.base)
    sys.stdout.write(status + "\n")
    return 0 if "training: finished" in status else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
