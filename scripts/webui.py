"""The web UI for the whole flow: data, training, listening, evaluation and export.

    python scripts/webui.py                          # http://127.0.0.1:7860, data in ./data, runs in ./runs
    python scripts/webui.py --port 7861 --runs runs --data data
    python scripts/webui.py --host 0.0.0.0 --auth-file ~/.xtts_webui_auth   # reachable from other machines
    XTTS_WEBUI_AUTH=alice:s3cret python scripts/webui.py --host 0.0.0.0

It binds to this machine only (127.0.0.1) unless --host says otherwise; any other host needs a
login: --auth-file PATH (one USER:PASS per line, chmod 600), the XTTS_WEBUI_AUTH=USER:PASS
environment variable, or --auth USER:PASS (which every user of the machine can read in
`ps -ef`). It answers only to the host names it was started for (localhost, 127.0.0.1, [::1],
the --host value, and each --allowed-host NAME), so a web page cannot reach it under its own
name (DNS rebinding). After 3 failed logins each next attempt waits longer (0.5 s, 1 s, 2 s ...
at most 30 s); over 20 failed logins a minute, logins are refused for the rest of that minute.
The page reaches only the --data and --runs folders; uploads over --max-upload-mb are refused.
Training runs in a separate process owned by the server: closing the tab loses nothing, and a
restarted server re-attaches to the running or finished run from its run folder. Gradio's usage
analytics are off.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli
from utils.webui.access import AUTH_ENV, is_loopback, resolve_auth  # noqa: F401 (is_loopback: the tests' door)

logger = logging.getLogger("scripts.webui")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="webui.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (default ./runs)")
    p.add_argument(
        "--data", type=Path, default=Path("data"), help="the data folder: datasets and uploads (default ./data)"
    )
    p.add_argument(
        "--auth-file",
        type=Path,
        help="a file with one USER:PASS per line, not readable by other users (chmod 600); "
        f"or set {AUTH_ENV}=USER:PASS; one of them is required for a --host other than loopback",
    )
    p.add_argument("--auth", help="USER:PASS on the command line (visible in ps -ef: prefer --auth-file)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name the server answers to (a reverse proxy's or the machine's public name); "
        "repeat for more; '*' answers to every name",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=1024.0,
        help="largest file the page accepts, in MB of 1,048,576 bytes as the page counts them (default 1024)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    # refused before anything is imported or bound; the variable leaves the environment (no child inherits it)
    auth = resolve_auth(args.auth, args.auth_file, args.host, os.environ)
    if args.auth is not None:
        logger.warning("--auth puts the password in the process list (ps -ef); --auth-file or %s do not", AUTH_ENV)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is imported: no calls home at start

    from utils.webui.app import build_app, launch
    from utils.webui.engine import Engine

    engine = Engine(args.data, args.runs)
    engine.max_upload_bytes = int(args.max_upload_mb * 2**20)
    logger.info("data folder %s, runs folder %s", engine.data_root, engine.runs_root)
    launch(build_app(engine), engine, host=args.host, port=args.port, auth=auth, allowed_hosts=args.allowed_host)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
