"""The whole flow in a real browser: Chromium drives the web UI served by scripts/webui.py.

Prepare the bundled demo data, edit a hyperparameter, train the tiny base, close and reopen the
page mid-run (and restart the server) to see it re-attach, watch the loss curve grow until the
run finishes, play a test sentence, speak a text, evaluate and export. "Search first": a 2-trial
study from the Train screen, its trials table and plots, then the training with its best values.

Screenshots of each screen go to ``tmp_path/screens``; ``scripts/make_screenshots.py`` sets
``WEBUI_SCREENS_DIR=docs/screens`` to refresh the README's pictures (downscaled) and
``WEBUI_WORKSPACE`` to a folder named as a user's, for the server's data and runs folders: a picture
whose page names the temporary folder is refused.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

TIMEOUT_MS = 150_000
PAGE_TEXT = "page text"  # PNG text chunk of a README picture: what the page showed (folder names included)


def _status(page) -> str:
    return page.locator("#train-status textarea").input_value()


def _wait_status(page, pattern: str, timeout: float = TIMEOUT_MS) -> str:
    page.wait_for_function(
        "([sel, pat]) => { const el = document.querySelector(sel); return el && new RegExp(pat).test(el.value); }",
        arg=["#train-status textarea", pattern],
        timeout=timeout,
    )
    return _status(page)


def _evaluations(text: str) -> int:
    m = re.search(r"evaluations: (\d+)", text)
    return int(m.group(1)) if m else 0


README_PICTURES = ("data", "evaluate", "listen", "search", "train")  # the README shows these


def _shot(page, tmp_path: Path, name: str, element: str | None = None) -> Path:
    """The whole page (or one ``element``) as ``tmp_path/screens/NAME.png``."""
    out = tmp_path / "screens" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if element:
        page.locator(element).screenshot(path=str(out))
    else:
        page.screenshot(path=str(out), full_page=True)
    dest = os.environ.get("WEBUI_SCREENS_DIR")
    if dest and name in README_PICTURES:
        text = page.inner_text("body")
        shown = temp_paths_shown(text)
        assert not shown, f"{name}.png would show the temporary folder ({shown[0]}): run scripts/make_screenshots.py"
        _small_copy(out, REPO_ROOT / dest / out.name, text)
    return out


def temp_paths_shown(text: str) -> list[str]:
    """The paths in a page's text that lie in the temporary folder (pytest's among them)."""
    temp = re.escape(tempfile.gettempdir().rstrip("/"))
    return re.findall(rf"{temp}/\S*|/tmp/\S*|pytest-of-\S*", text)


def _small_copy(src: Path, dest: Path, page_text: str, width: int = 900, max_height: int = 1400) -> None:
    """A downscaled copy for the README, with the page's text in a PNG text chunk (checked below)."""
    from PIL import Image, PngImagePlugin

    dest.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PAGE_TEXT, page_text, zip=True)
    with Image.open(src) as im:
        im = im.crop((0, 0, im.width, min(im.height, int(max_height * im.width / width))))
        im = im.resize((width, int(im.height * width / im.width)))
        im = im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        im.save(dest, optimize=True, pnginfo=info)


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.get_by_text("XTTS v2 fine-tuning").first.wait_for(timeout=60_000)
    return page


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _add_bad_transcript(dataset: Path) -> None:
    """A clip whose transcript does not match its speech (2 letters for a whole sentence)."""
    from utils.demo import espeak_to_wav

    espeak_to_wav("This sentence is much longer than what its transcript says.", dataset / "wavs" / "bad_001.wav")
    with open(dataset / "metadata_train.csv", "a", encoding="utf-8") as fh:
        fh.write("wavs/bad_001.wav|Hi.|demo\n")


def _prepare_demo(page, tmp_path: Path, data_root: Path) -> None:
    page.locator("#data-demo").click()
    page.wait_for_function("() => document.querySelector('#data-message')?.innerText.includes('bundled demo copied')")
    _add_bad_transcript(data_root / "demo_en")
    page.locator("#data-prepare").click()
    page.wait_for_function(
        "() => document.querySelector('#data-summary')?.innerText.includes('kept in 13 clips')", timeout=60_000
    )
    summary = page.locator("#data-summary").inner_text()
    assert "speakers: demo (13)" in summary and "1 clips to review" in summary, summary
    # the review view: the flagged clip is pre-selected with its audio and transcript
    page.locator("#data-clip audio").first.wait_for(state="attached", timeout=20_000)
    assert page.locator("#data-text textarea").input_value() == "Hi."
    _shot(page, tmp_path, "data")
    page.locator("#data-drop").click()
    page.wait_for_function(
        "() => document.querySelector('#data-message')?.innerText.includes('review written (drop 1)')", timeout=60_000
    )
    page.wait_for_function(
        "() => document.querySelector('#data-summary')?.innerText.includes('kept in 12 clips')", timeout=60_000
    )
    assert "0 clips to review" in page.locator("#data-summary").inner_text()
    assert "bad_001" not in (data_root / "demo_en" / "metadata_train.csv").read_text()


def _edit_hparam(page, name: str, value: str) -> None:
    """Type a new value into the hyperparameter table's value cell of ``name`` (Gradio 6 grid cells).

    The cell's editor appears a moment after the double click; keys sent before it exists were
    lost or appended to the old value ("42" for 2), so the value goes into the editor itself.
    """
    names = page.locator('#train-hparams [role=gridcell][data-col="0"]')
    texts = [t.strip() for t in names.all_inner_texts()]
    row = names.nth(texts.index(name)).get_attribute("data-row")
    cell = f'#train-hparams [data-testid="cell-{row}-1"]'
    page.locator(cell).dblclick()
    editor = page.locator(f"{cell} textarea, {cell} input").first
    editor.wait_for(timeout=10_000)
    editor.fill(value)
    editor.press("Enter")
    shown = f"{cell} span[data-editable]"
    page.wait_for_function(
        "([sel, v]) => document.querySelector(sel)?.innerText.trim() === v", arg=[shown, value], timeout=10_000
    )
    page.wait_for_timeout(300)  # then Gradio's change event reaches the server


def _start_training(page) -> None:
    _tab(page, "Train")
    page.locator("#train-resolve").click()
    page.locator('#train-hparams [role=gridcell][data-col="0"]', has_text="eval_every_steps").wait_for(timeout=90_000)
    _edit_hparam(page, "epochs", "2")
    _edit_hparam(page, "eval_every_steps", "3")
    page.locator("#train-start").click()
    page.wait_for_function(
        "() => document.querySelector('#train-message')?.innerText.includes('training started')", timeout=30_000
    )
    message = page.locator("#train-message").inner_text()
    assert "epochs=2" in message and "eval_every_steps=3" in message, message


def test_whole_flow_in_chromium(server, browser, tmp_path: Path) -> None:
    page = _open(browser, server.url)
    _prepare_demo(page, tmp_path, server.data)
    _start_training(page)
    first = _wait_status(page, r"evaluations: [1-9]")
    assert "training: running" in first, first
    page.locator("#train-loss canvas, #train-loss svg").first.wait_for(timeout=20_000)
    # close the tab mid-run; a new page re-attaches to the running training
    page.close()
    page = _open(browser, server.url)
    _tab(page, "Train")
    again = _wait_status(page, r"run: xtts_ft_")
    assert "training: running" in again or "training: finished" in again, again
    assert _evaluations(again) >= _evaluations(first)
    # restart the server mid-run: the training process is not its child's child; it keeps going
    if "training: running" in again:
        page.close()
        server.restart()
        page = _open(browser, server.url)
        _tab(page, "Train")
        assert "training: running" in _wait_status(page, r"run: xtts_ft_") or "finished" in _status(page)
    done = _wait_status(page, r"training: finished")
    assert "optimizer step 10 of 10 (100%)" in done, done  # 2 epochs x 5 micro-batches of 2 from 10 rows
    assert _evaluations(done) > _evaluations(first)
    run_dir = next(p for p in server.runs.iterdir() if p.name.startswith("xtts_ft_"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["toolkit"]["hparams"]["sources"]["epochs"] == "cli"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == _evaluations(done)
    page.locator("#train-resolve").click()  # the reopened page selected the run's dataset again
    page.locator('#train-hparams [role=gridcell][data-col="0"]', has_text="eval_every_steps").wait_for(timeout=90_000)
    _shot(page, tmp_path, "train")
    # an error is one message in the page, not a traceback
    page.locator("#train-stop").click()
    page.get_by_text("no training is running; nothing to stop").first.wait_for(timeout=20_000)
    assert "Traceback" not in page.content()
    page.locator(".toast-close").first.click()
    _listen(page, tmp_path)
    _evaluate_export(page, tmp_path)


def _listen(page, tmp_path: Path) -> None:
    _tab(page, "Listen")
    page.get_by_role("button", name="Refresh runs").first.click()
    audio = page.locator("#listen-tests audio").first
    audio.wait_for(timeout=30_000)
    page.wait_for_function(
        "() => document.querySelectorAll('#listen-tests th').length >= 3"
    )  # sentence + 2 steps or more
    audio.evaluate("el => el.play()")
    page.wait_for_function(
        "() => "
        "{ const a = document.querySelector('#listen-tests audio'); return a && (a.currentTime > 0 || a.ended); }",
        timeout=20_000,
    )
    assert audio.evaluate("el => el.duration") > 0
    page.locator("#listen-speak").click()
    page.locator("#listen-audio audio, #listen-audio a[download]").first.wait_for(state="attached", timeout=60_000)
    _shot(page, tmp_path, "listen")


def _evaluate_export(page, tmp_path: Path) -> None:
    _tab(page, "Evaluate / export")
    page.get_by_role("button", name="Refresh runs").last.click()
    page.wait_for_timeout(2000)
    page.locator("#eval-run-button").click()
    page.wait_for_function("() => document.querySelector('#eval-best')?.innerText.includes('best:')", timeout=120_000)
    names = page.locator('#eval-table [role=gridcell][data-col="0"]').all_inner_texts()
    assert any(re.fullmatch(r"(checkpoint_\d+|best_model(_\d+)?)\.pth", n.strip()) for n in names), names
    page.locator("#eval-export").click()
    page.wait_for_function(
        "() => document.querySelector('#eval-exported')?.innerText.includes('scripts/synthesize.py')", timeout=120_000
    )
    text = page.locator("#eval-exported").inner_text()
    assert re.search(r"\(\d+\.\d MB\)", text), text
    _shot(page, tmp_path, "evaluate")


def test_search_first_in_chromium(server, browser, tmp_path: Path) -> None:
    """Tick "search first" with 2 trials of 1 epoch: the trials table and the study's plots appear,
    then the training runs with the study's best values."""
    page = _open(browser, server.url)
    page.locator("#data-demo").click()
    page.wait_for_function("() => document.querySelector('#data-message')?.innerText.includes('bundled demo copied')")
    _tab(page, "Train")
    page.locator("#train-resolve").click()
    page.locator('#train-hparams [role=gridcell][data-col="0"]', has_text="eval_every_steps").wait_for(timeout=90_000)
    _edit_hparam(page, "epochs", "1")
    page.locator("#train-search-first input[type=checkbox]").check()
    for field, value in (("#train-search-trials input", "2"), ("#train-search-budget input", "1")):
        page.locator(field).fill(value)
        page.locator(field).press("Tab")
    page.wait_for_timeout(300)
    page.locator("#train-start").click()
    page.wait_for_function(
        "() => document.querySelector('#train-message')?.innerText.includes('search started')", timeout=30_000
    )
    assert "2 trials of up to 1 epoch(s)" in page.locator("#train-message").inner_text()
    page.wait_for_function(
        "() => document.querySelectorAll('#search-trials [role=gridcell][data-col=\"0\"]').length === 2",
        timeout=TIMEOUT_MS * 2,
    )
    page.locator("#search-plots img").first.wait_for(timeout=60_000)
    done = _wait_status(page, r"training: finished", timeout=TIMEOUT_MS * 2)
    states = [t.strip() for t in page.locator('#search-trials [role=gridcell][data-col="1"]').all_inner_texts()]
    assert len(states) == 2 and set(states) <= {"complete", "pruned"} and "complete" in states, states
    assert page.locator("#search-plots img").count() >= 1
    assert "search done; training with" in page.locator("#search-status textarea").input_value()
    assert "optimizer step 5 of 5 (100%)" in done, done  # the page's 1 epoch wins over best.json
    _shot(page, tmp_path, "train_search")
    page.locator("#search-plots").scroll_into_view_if_needed()
    page.wait_for_function(  # the plots are real pictures the browser decoded, not empty frames
        "() => [...document.querySelectorAll('#search-plots img')].every(i => i.complete && i.naturalWidth > 100)",
        timeout=30_000,
    )
    _shot(page, tmp_path, "search", "#search-panel")


def test_the_readme_pictures_show_no_temporary_folder() -> None:
    from PIL import Image

    pictures = sorted((REPO_ROOT / os.environ.get("WEBUI_SCREENS_DIR", "docs/screens")).glob("*.png"))
    assert [p.name for p in pictures] == [f"{name}.png" for name in README_PICTURES]
    for path in pictures:
        with Image.open(path) as im:
            text = im.text.get(PAGE_TEXT, "")
        assert "Data folder:" in text and "runs folder:" in text, f"{path.name}: made by scripts/make_screenshots.py?"
        assert not temp_paths_shown(text), (path.name, temp_paths_shown(text)[:3])
