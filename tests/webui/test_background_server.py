"""One server started as a service is (``nohup python scripts/webui.py ... &`` from a shell script,
so SIGINT is ignored in it), driven by Chromium and by gradio_client: host names, stable API
names, uploads with names in any script, the client example that trains, and Stop in the page
that stops the run (a checkpoint, then continue)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.webui.conftest import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, BackgroundServer, stop_workers, zombie_children
from tests.webui.test_browser import _edit_hparam, _open, _status, _tab

UPLOAD_NAMES = ["録音.wav", "テスト.wav", "ሰላም ዓለም.wav", "интервью 1.wav", "интервью 2.wav"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("background")
    srv = BackgroundServer(root, ("--max-upload-mb", "1"), env={"GRADIO_TEMP_DIR": str(root / "gradio-uploads")})
    srv.start()
    try:
        yield srv
    finally:
        stop_workers(srv.runs)
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip("Chromium is not installed (/usr/bin/chromium); scripts/setup_env.sh installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _wait_status(page, pattern: str, timeout: float = 150_000) -> str:
    """The live status once it matches ``pattern`` (polled every 0.5 s: animation frames may pause)."""
    page.wait_for_function(
        "([sel, pat]) => { const el = document.querySelector(sel); return el && new RegExp(pat).test(el.value); }",
        arg=["#train-status textarea", pattern],
        timeout=timeout,
        polling=500,
    )
    return _status(page)


def _get(server: BackgroundServer, path: str, host: str) -> int:
    request = urllib.request.Request(server.url.rstrip("/") + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_background_server_answers_only_its_host_names(server: BackgroundServer) -> None:
    """DNS rebinding: a page under another name reaching 127.0.0.1 is refused; the real names work."""
    sig_ignored = int(re.search(r"SigIgn:\s*(\w+)", Path(f"/proc/{server.pid}/status").read_text()).group(1), 16)
    assert sig_ignored & 0b10, "the server must run with SIGINT ignored, as nohup ... & from a script leaves it"
    assert _get(server, "/config", "evil.example") == 403
    assert _get(server, "/gradio_api/info", f"evil.example:{server.port}") == 403
    assert _get(server, "/config", f"127.0.0.1:{server.port}") == 200
    assert _get(server, "/config", f"localhost:{server.port}") == 200


def test_every_endpoint_has_a_stable_name(server: BackgroundServer) -> None:
    from gradio_client import Client

    api = Client(server.url, verbose=False).view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    assert {
        "/use_demo",
        "/upload",
        "/prepare",
        "/show_hyperparameters",
        "/start_training",
        "/stop_training",
        "/continue_training",
        "/train_status",
        "/speak",
        "/evaluate",
        "/export",
    } <= names, names
    assert not [n for n in names if n.startswith("/lambda") or re.search(r"_\d+$", n)], names
    assert not api["unnamed_endpoints"]
    labels = [r["label"] for e in api["named_endpoints"].values() for r in e["returns"]]
    assert not [x for x in labels if re.fullmatch(r"value_\d+", str(x))], labels


def _wav(path: Path, seconds: float, freq: float = 220.0) -> Path:
    t = np.arange(int(16000 * seconds)) / 16000
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.2 * np.sin(2 * math.pi * freq * t)).astype("float32"), 16000)
    return path


def _upload(page, files: list[Path]) -> str:
    """Pick ``files`` in the file box, press Upload, and return the new message."""
    before = page.locator("#data-message").inner_text()
    page.locator("#data-files input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_timeout(500)
    page.locator("#data-upload").click()
    page.wait_for_function(
        "(before) => { const t = (document.querySelector('#data-message')?.innerText || '').trim();"
        " return t !== before.trim() && /^\\d+ file\\(s\\) saved|^nothing saved/.test(t); }",
        arg=before,
    )
    return page.locator("#data-message").inner_text().strip()


def test_uploads_keep_their_names_and_never_overwrite(server: BackgroundServer, browser, tmp_path: Path) -> None:
    """Five recordings named in four scripts arrive as five files under their own names; the same
    names again get " (2)"; nothing stays in Gradio's upload folder; an upload over the limit is refused."""
    files = [_wav(tmp_path / "src" / name, 0.5 + 0.1 * i, 200.0 + 50 * i) for i, name in enumerate(UPLOAD_NAMES)]
    page = _open(browser, server.url)
    page.get_by_text("Upload recordings or a dataset").click()
    message = _upload(page, files)
    folder = server.data / "uploads" / "recordings"
    assert message.startswith("5 file(s) saved in"), message
    assert sorted(p.name for p in folder.iterdir()) == sorted(unicodedata.normalize("NFC", n) for n in UPLOAD_NAMES)
    for src in files:  # each file is the recording that was sent under its name
        assert (folder / src.name).read_bytes() == src.read_bytes()
    message = _upload(page, files[:2])
    assert message.startswith("2 file(s) saved") and "録音.wav as 録音 (2).wav" in message, message
    assert (folder / "テスト (2).wav").read_bytes() == files[1].read_bytes() and len(list(folder.iterdir())) == 7
    temp = server.root / "gradio-uploads"
    assert not [p for p in temp.rglob("*") if p.is_file() and p.suffix == ".wav"]  # moved, not copied: stored once
    big = _wav(tmp_path / "src" / "long.wav", 40.0)  # 1.2 MB over a 1 MB limit
    page.locator("#data-files input[type=file]").set_input_files(str(big))
    page.get_by_text('exceed the maximum allowed size of 1.0 Mb: "long.wav"').first.wait_for(timeout=20_000)
    assert not (folder / "long.wav").exists()
    assert _post_upload(server, big) == 413  # the server refuses it too, whatever the client


def _post_upload(server: BackgroundServer, path: Path) -> int:
    boundary = "----xtts-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server.url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _client_example():
    spec = importlib.util.spec_from_file_location(
        "webui_client_example", REPO_ROOT / "scripts" / "webui_client_example.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_no_zombie(pid: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while zombie_children(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not zombie_children(pid), "a finished training process is left as a zombie of the server"


def test_client_example_prepares_trains_and_reads_the_status(server: BackgroundServer) -> None:
    """scripts/webui_client_example.py through gradio_client: demo data, 1 epoch, the final status;
    the finished worker is reaped."""
    status = _client_example().train_through_api(server.url, epochs=1, poll_s=1.0)
    assert "training: finished" in status and "optimizer step 5 of 5 (100%)" in status, status
    assert re.search(r"run: api_run_\d{6}", status), status
    _wait_no_zombie(server.pid)


def test_stop_in_the_page_stops_and_continue_finishes(server: BackgroundServer, browser) -> None:
    """Stop pressed in the page ends the run early with a checkpoint, although the server ignores
    SIGINT; the live line counts the run's steps; continue then trains to the new end."""
    page = _open(browser, server.url)
    page.locator("#data-demo").click()
    page.wait_for_function("() => document.querySelector('#data-message')?.innerText.includes('bundled demo copied')")
    _tab(page, "Train")
    page.locator("#train-resolve").click()
    page.locator('#train-hparams [role=gridcell][data-col="0"]', has_text="eval_every_steps").wait_for(timeout=90_000)
    _edit_hparam(page, "epochs", "40")
    page.locator("#train-start").click()
    page.wait_for_function(
        "() => document.querySelector('#train-message')?.innerText.includes('training started')", timeout=90_000
    )
    live = _wait_status(page, r"trainer step \d+ of")
    m = re.search(r"trainer step (\d+) of 200 \(epoch (\d+) of 40\)", live)  # 40 epochs x 5 steps: one count
    assert m and int(m.group(1)) <= 5 * int(m.group(2)), live
    page.locator("#train-stop").click()
    page.wait_for_function("() => document.querySelector('#train-message')?.innerText.includes('stop requested')")
    stopped = _wait_status(page, r"training: (stopped|finished|failed)", timeout=120_000)
    assert "training: stopped" in stopped, stopped
    run = server.runs / re.search(r"run: (\S+)", stopped).group(1)
    steps = sorted(int(p.stem.split("_")[1]) for p in run.glob("checkpoint_*.pth"))
    assert steps and steps[-1] < 200, steps  # stopped early, with a checkpoint to go on from
    _wait_no_zombie(server.pid)
    epochs = steps[-1] // 5 + 1  # to the end of the epoch it stopped in (or one more, stopped at its end)
    page.locator("#train-shown input").fill(run.name)
    page.locator("#train-shown input").press("Enter")
    page.locator("#train-epochs input").fill(str(epochs))
    page.locator("#train-continue").click()
    page.wait_for_function(
        "() => document.querySelector('#train-message')?.innerText.includes('continuing')",
        timeout=120_000,
        polling=500,
    )
    done = _wait_status(page, r"training: (finished|failed)", timeout=240_000)
    assert done.startswith("training: finished") and f"optimizer step {5 * epochs} of" in done, done
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["optimizer_step"] == 5 * epochs and (run / f"checkpoint_{5 * epochs}.pth").is_file()
