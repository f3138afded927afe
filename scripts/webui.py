"""The web UI for the whole flow: data, training, listening, evaluation and export.

    python scripts/webui.py                          # http://127.0.0.1:7860, data in ./data, runs in ./runs
    python scripts/webui.py --port 7861 --runs runs --data data
    python scripts/webui.py --host 0.0.0.0 --auth USER:PASS   # reachable from other machines

It binds to this machine only (127.0.0.1) unless --host says otherwise; any other host needs
--auth USER:PASS. The page reaches only the --data and --runs folders. Training runs in a
separate process owned by the server: closing the tab loses nothing, and a restarted server
re-attaches to the running or finished run from its run folder.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli
from utils.errors import ConfigError

logger = logging.getLogger("scripts.webui")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None, host: str) -> tuple[str, str] | None:
    """USER:PASS as a tuple; refuse a non-loopback host without it.

    Raises:
        ConfigError: no --auth for a non-loopback host, or not in USER:PASS form.
    """
    if text is None:
        if not is_loopback(host):
            raise ConfigError(
                f"--host {host} makes the web UI reachable from other machines, and anyone who reaches it can train "
                "and read the data and runs folders; add --auth USER:PASS, or leave --host at 127.0.0.1"
            )
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth takes USER:PASS (both non-empty), e.g. --auth alice:s3cret")
    return user, password


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="webui.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (default ./runs)")
    p.add_argument(
        "--data", type=Path, default=Path("data"), help="the data folder: datasets and uploads (default ./data)"
    )
    p.add_argument("--auth", help="USER:PASS; required for a --host other than loopback")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)
    auth = parse_auth(args.auth, args.host)  # refused before anything is imported or bound

    from utils.webui.app import build_app, launch
    from utils.webui.engine import Engine

    engine = Engine(args.data, args.runs)
    logger.info("data folder %s, runs folder %s", engine.data_root, engine.runs_root)
    launch(build_app(engine), engine, host=args.host, port=args.port, auth=auth)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
