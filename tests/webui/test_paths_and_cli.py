"""Path safety and the command line: sanitised names, confined paths, no open bind without auth."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.errors import ConfigError
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


def test_loopback_and_auth_rules() -> None:
    mod = _webui_script()
    assert mod.is_loopback("127.0.0.1") and mod.is_loopback("localhost") and mod.is_loopback("::1")
    assert mod.is_loopback("127.0.0.2")
    assert not mod.is_loopback("0.0.0.0") and not mod.is_loopback("192.168.1.5") and not mod.is_loopback("example.org")
    assert mod.parse_auth(None, "127.0.0.1") is None
    assert mod.parse_auth("alice:s3:cret", "0.0.0.0") == ("alice", "s3:cret")
    with pytest.raises(ConfigError, match="add --auth USER:PASS"):
        mod.parse_auth(None, "0.0.0.0")
    with pytest.raises(ConfigError, match="USER:PASS"):
        mod.parse_auth("alice", "0.0.0.0")


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
    assert len(lines) == 1 and lines[0].startswith("error: --host 0.0.0.0") and "--auth USER:PASS" in lines[0], (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_auth_guards_the_app(tmp_path: Path) -> None:
    """With --auth, nothing but the login page answers until the right USER:PASS is given."""
    import http.cookiejar
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.webui.conftest import Server

    server = Server(tmp_path, ("--auth", "alice:s3cret"))
    server.start()
    try:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def status(path: str, form: dict[str, str] | None = None) -> int:
            data = urllib.parse.urlencode(form).encode() if form else None
            try:
                with opener.open(server.url.rstrip("/") + path, data=data, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status("/config") == 401 and status("/gradio_api/info") == 401
        assert status("/login", {"username": "alice", "password": "wrong"}) == 400
        assert status("/config") == 401
        assert status("/login", {"username": "alice", "password": "s3cret"}) == 200
        assert status("/config") == 200
    finally:
        server.stop()
