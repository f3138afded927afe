"""Score what the speaking model said, on a machine that has the scorers (the GPU machine lacks them).

Reads the folder :func:`bench.speaking.train_speaking_model` wrote (``summary.json``, ``wavs/TAG/
VOICE/NN.wav`` with ``spoken.json`` beside them, the two reference clips) and scores every output
with the toolkit's evaluation (:class:`utils.after.evaluate.Scorer`): Whisper tiny.en CER and WER
against the held-out sentence, GE2E similarity to the voice's own reference and to the other
voice's, DNSMOS, timing and the flags. The same measures on the espeak-ng recordings of the same
sentences give the ceiling (what tiny.en makes of espeak-ng itself).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def score_folder(out_dir: str | Path) -> dict[str, Any]:
    """Score every set of spoken wavs; returns (and writes to OUT/scores.json) the per-set summary."""
    from utils.after.asr import default_asr_model, load_asr
    from utils.after.evaluate import Scorer
    from utils.after.quality import GE2ESimilarity

    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    refs = {s: _local(out, p) for s, p in summary["data"]["references"].items()}
    asr, note = load_asr("en", default_asr_model())
    if asr is None:
        raise RuntimeError(f"no Whisper model to score with: {note}")
    ge2e = GE2ESimilarity()
    scorers = {s: Scorer(None, "en", [ref], asr=asr, ge2e=ge2e) for s, ref in refs.items()}
    report: dict[str, Any] = {"sets": {}, "samples": []}
    for spoken in sorted((out / "wavs").glob("*/spoken.json")):
        tag = spoken.parent.name
        rows = json.loads(spoken.read_text(encoding="utf-8"))
        scored = [_score_row(out, row, scorers, ge2e) for row in rows]
        report["samples"] += [dict(r, set=tag) for r in scored]
        report["sets"][tag] = _summarize(scored, summary["data"]["speakers"])
    report["reference_choice"] = _reference_choice(out, scorers)
    (out / "scores.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _reference_choice(out: Path, scorers: dict[str, Any]) -> dict[str, Any]:
    """Whether the reference the toolkit chose for each voice (``wavs/references/VOICE.wav``) is that voice:
    its GE2E similarity to the voice's own reference against the other voice's."""
    from utils.data.audio import load_audio

    result: dict[str, Any] = {}
    for speaker in scorers:
        wav = out / "wavs" / "references" / f"{speaker}.wav"
        if not wav.is_file():
            continue
        audio, sr = load_audio(wav, target_sr=None)
        sims = {s: sc.ge2e.similarity(audio, sr, sc.ge2e_target()) for s, sc in scorers.items()}
        own = sims.pop(speaker)
        other = max((v for v in sims.values() if v is not None), default=None)
        right = None if own is None or other is None else own > other
        result[speaker] = {"clip": wav.name, "ge2e_own": own, "ge2e_other": other, "right_voice": right}
    return result


def _local(out: Path, path: str) -> Path:
    """A path the GPU machine wrote, found in the returned folder (``data/wavs/NAME``)."""
    p = Path(path)
    return p if p.is_file() else out / "data" / "wavs" / p.name


def _score_row(out: Path, row: dict[str, Any], scorers: dict[str, Any], ge2e: Any) -> dict[str, Any]:
    from utils.data.audio import load_audio

    audio, sr = load_audio(_local_wav(out, row["wav"]), target_sr=None)
    rec = scorers[row["speaker"]].score(audio, sr, row["text"])
    others = {s: sc for s, sc in scorers.items() if s != row["speaker"]}
    sims = [ge2e.similarity(audio, sr, sc.ge2e_target()) for sc in others.values()]
    sims = [s for s in sims if s is not None]  # None: no speech to embed
    rec["similarity_other"] = round(float(np.mean(sims)), 4) if sims else None
    rec["speaker"], rec["index"] = row["speaker"], row["index"]
    rec["guard_flags"] = row.get("flags") or []
    return rec


def _local_wav(out: Path, path: str) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    parts = p.parts
    return out.joinpath(*parts[parts.index("wavs") :])


def _summarize(rows: list[dict[str, Any]], speakers: list[str]) -> dict[str, Any]:
    def mean(key: str, subset: list[dict[str, Any]]) -> float | None:
        vals = [r[key] for r in subset if r.get(key) is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    out: dict[str, Any] = {"n": len(rows), "cer": mean("cer", rows), "wer": mean("wer", rows)}
    out["dnsmos_ovrl"] = mean("dnsmos_ovrl", rows)
    out["flagged_share"] = round(sum(bool(r["flags"]) for r in rows) / max(1, len(rows)), 3)
    out["guard_flagged_share"] = round(sum(bool(r["guard_flags"]) for r in rows) / max(1, len(rows)), 3)
    for s in speakers:
        mine = [r for r in rows if r["speaker"] == s]
        if mine:
            own, other = mean("similarity_ge2e", mine), mean("similarity_other", mine)
            out[f"voice_{s}"] = {"n": len(mine), "cer": mean("cer", mine), "ge2e_own": own, "ge2e_other": other}
            out[f"voice_{s}"]["nearer_own"] = None if own is None or other is None else own > other
    return out
