"""Refresh the README's pictures of the web UI (docs/screens/*.png) in a workspace named as a user's.

    python scripts/make_screenshots.py                                 # workspace ~/xtts-voice
    python scripts/make_screenshots.py --workspace ~/my-voice --keep   # keep its data and runs afterwards

The pictures come from the browser test (tests/webui/test_browser.py, Chromium driving the whole
flow on the tiny demo base). Its server normally works in pytest's temporary folder, whose path
the page shows in its header and messages; here it runs with WORKSPACE/data and WORKSPACE/runs,
and the test refuses to write a picture whose page text names the temporary folder. The
workspace must be new (or empty) and is removed afterwards unless --keep. Needs Chromium
(scripts/setup_env.sh installs it) and the test extra; a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import cli
from utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
BROWSER_TEST = "tests/webui/test_browser.py"
logger = logging.getLogger("scripts.make_screenshots")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", type=Path, default=Path("~/xtts-voice"), help="a new folder (default ~/xtts-voice)")
    p.add_argument("--out", type=Path, default=Path("docs/screens"), help="where the PNGs go (default docs/screens)")
    p.add_argument("--keep", action="store_true", help="keep the workspace (data, runs) afterwards")
    return p.parse_args(argv)


def check_workspace(path: Path) -> Path:
    """The workspace as an absolute path; it must not hold anything yet (it is removed afterwards).

    Raises:
        ConfigError: it is a file or a folder with something in it.
    """
    path = Path(os.path.abspath(path.expanduser()))
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise ConfigError(f"--workspace {path} is not empty; give a new folder (the pictures show a fresh workspace)")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging()
    workspace = check_workspace(args.workspace)
    out = args.out if args.out.is_absolute() else REPO_ROOT / args.out
    env = {**os.environ, "WEBUI_WORKSPACE": str(workspace), "WEBUI_SCREENS_DIR": str(out)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pytest", BROWSER_TEST, "-q", "-x", "-p", "no:cacheprovider"]
    logger.info("browser test with data and runs in %s; pictures to %s", workspace, out)
    workspace.mkdir(parents=True, exist_ok=True)
    try:
        code = subprocess.run(command, cwd=REPO_ROOT, env=env, check=False).returncode
    finally:
        if not args.keep:
            shutil.rmtree(workspace, ignore_errors=True)
    if code == 0:
        logger.info("wrote %s", ", ".join(sorted(p.name for p in out.glob("*.png"))))
    return code


if __name__ == "__main__":
    sys.exit(cli.run(main))
