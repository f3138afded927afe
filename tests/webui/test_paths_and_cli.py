"""Path safety and the command line: cleaned names, confined paths, no open bind without a login,
the login kept out of the process list, guessed passwords slowed down, no analytics."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.errors import ConfigError
from utils.webui.access import LoginThrottle, resolve_auth
from utils.webui.paths import confine, safe_name, unique_path, word_name

REPO_ROOT = Path(__file__).resolve().parents[2]


def _webui_script():
    spec = importlib.util.spec_from_file_location("webui_script", REPO_ROOT / "scripts" / "webui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("my clip (1).wav", "my clip (1).wav"),
        (".hidden.wav", "hidden.wav"),
        ("Ünïcödé.mp3", "Ünïcödé.mp3"),
        ("U\u0308ber.wav", "\u00dcber.wav"),  # NFC: one code point for Ü
        ("録音.wav", "録音.wav"),
        ("ሰላም ዓለም.wav", "ሰላም ዓለም.wav"),
        ("a\x00b\x1bc\u202e.wav", "abc.wav"),  # control and direction-override characters go
        ('what?: "a|b" <c>*.wav', "what__ _a_b_ _c__.wav"),  # what a file system refuses
        ("CON.wav", "_CON.wav"),
        ("...", "upload"),
        ("", "upload"),
    ],
)
def test_safe_name(raw: str, clean: str) -> None:
    assert safe_name(raw) == clean


def test_safe_name_keeps_the_extension_of_long_names() -> None:
    name = safe_name("a" * 300 + ".flac")
    assert len(name) == 150 and name.endswith(".flac")
    name = safe_name("録" * 100 + ".wav")  # 3 bytes a character: cut at a character, not a byte
    assert len(name.encode()) <= 150 and name.endswith("録.wav")


def test_word_name_and_unique_path(tmp_path: Path) -> None:
    assert word_name("my run (take 2)!") == "my_run_take_2" and word_name("ሙከራ 1") == "ሙከራ_1"
    assert word_name("?!") == "run"
    names = [unique_path(tmp_path, "интервью 1.wav").name for _ in range(3)]
    assert names == ["интервью 1.wav", "интервью 1 (2).wav", "интервью 1 (3).wav"]


def test_confine_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "ds").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert confine("ds", [root]) == (root / "ds").resolve()
    assert confine(str(root / "ds"), [root]) == (root / "ds").resolve()
    for bad in ("../secret", str(outside), "ds/../../secret", "link", "/etc"):
        with pytest.raises(ConfigError, match="outside the folders this server may use"):
            confine(bad, [root])
    with pytest.raises(ConfigError, match="does not exist"):
        confine("missing", [root])
    with pytest.raises(ConfigError, match="no dataset folder given"):
        confine("", [root], what="dataset folder")


def test_loopback_and_auth_rules(tmp_path: Path) -> None:
    mod = _webui_script()
    assert mod.is_loopback("127.0.0.1") and mod.is_loopback("localhost") and mod.is_loopback("::1")
    assert mod.is_loopback("127.0.0.2")
    assert not mod.is_loopback("0.0.0.0") and not mod.is_loopback("192.168.1.5") and not mod.is_loopback("example.org")
    assert resolve_auth(None, None, "127.0.0.1", {}) is None
    assert resolve_auth("alice:s3:cret", None, "0.0.0.0", {}) == [("alice", "s3:cret")]
    with pytest.raises(ConfigError, match="add --auth-file PATH"):
        resolve_auth(None, None, "0.0.0.0", {})
    with pytest.raises(ConfigError, match="USER:PASS"):
        resolve_auth("alice", None, "0.0.0.0", {})
    env = {"XTTS_WEBUI_AUTH": "bob:pw", "HOME": "/x"}
    assert resolve_auth(None, None, "0.0.0.0", env) == [("bob", "pw")] and env == {"HOME": "/x"}  # not inherited
    secret = tmp_path / "auth"
    secret.write_text("# logins\nalice:s3cret\n\ncarol:pw2\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=f"readable by every user of this machine; run: chmod 600 {secret}"):
        resolve_auth(None, secret, "0.0.0.0", {})
    secret.chmod(0o600)
    assert resolve_auth(None, secret, "0.0.0.0", {}) == [("alice", "s3cret"), ("carol", "pw2")]
    with pytest.raises(ConfigError, match="not both"):
        resolve_auth("a:b", secret, "0.0.0.0", {})


def test_login_throttle_delays_and_caps() -> None:
    """3 failures free, then 0.5 s, 1 s, 2 s ... per client; 20 failures a minute close logins for all."""
    t = LoginThrottle()
    for _ in range(3):
        assert t.wait_s("a", 0.0) == 0.0
        t.record("a", False, 0.0)
    waits = []
    for i in range(4):
        now = 10.0 * (i + 1)
        t.record("a", False, now)
        waits.append(t.wait_s("a", now))
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert t.wait_s("b", 40.0) == 0.0  # another client is not slowed by a's failures
    t.record("a", True, 41.0)
    assert t.wait_s("a", 41.0) == 0.0  # a success clears them
    for i in range(13):
        t.record(f"c{i}", False, 42.0)
    assert len(t._recent) == 20 and t.wait_s("d", 42.0) is None and t.retry_after_s(42.0) == 19
    assert t.wait_s("d", 61.0) == 0.0  # the failures at 0 s have left the minute


def test_gradio_analytics_are_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No call to Gradio's servers at start: the Blocks' analytics switch is off even without the variable."""
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    from utils.webui.app import build_app
    from utils.webui.engine import Engine

    app = build_app(Engine(tmp_path / "data", tmp_path / "runs", cache_dir=tmp_path / "cache"))
    assert app.analytics_enabled is False
    assert app.get_config_file()["analytics_enabled"] is False


def test_non_loopback_bind_without_auth_is_refused() -> None:
    """The real command: one line on stderr, exit code 2, nothing served."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "webui.py"), "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(REPO_ROOT),
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --host 0.0.0.0") and "--auth-file PATH" in lines[0], (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_login_from_a_file_guards_the_app_and_slows_guesses(tmp_path: Path) -> None:
    """--auth-file: the password is not in the process's command line; nothing but the login page
    answers until the right USER:PASS is given; wrong guesses of one client wait longer each time."""
    import http.cookiejar
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.webui.conftest import Server

    secret = tmp_path / "auth"
    secret.write_text("alice:s3cret-from-file\n")
    secret.chmod(0o600)
    server = Server(tmp_path, ("--auth-file", str(secret)))
    server.start()
    try:
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
        assert "--auth-file" in cmdline and "s3cret-from-file" not in cmdline
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def status(path: str, form: dict[str, str] | None = None) -> int:
            data = urllib.parse.urlencode(form).encode() if form else None
            try:
                with opener.open(server.url.rstrip("/") + path, data=data, timeout=30) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status("/config") == 401 and status("/gradio_api/info") == 401
        assert status("/login", {"username": "alice", "password": "wrong"}) == 400
        assert status("/config") == 401
        assert status("/login", {"username": "alice", "password": "s3cret-from-file"}) == 200
        assert status("/config") == 200
        started = time.monotonic()  # the success cleared the count: 3 free, then 0.5 + 1 + 2 s
        codes = [status("/login", {"username": "alice", "password": f"guess{i}"}) for i in range(6)]
        assert codes == [400] * 6 and time.monotonic() - started >= 3.5
    finally:
        server.stop()
