"""Benchmark data preparation on a generated two-voice interview: clean edges, one voice per clip,
speech kept, copies caught, split sides, and throughput (x real time).

    python scripts/bench_data_trust.py --whisper-model PATH_TO_TINY_EN --cores 2 --out bench_data.json

The interview (about 100 s, espeak-ng en-us and en-gb+f3, pauses 0.3-1.5 s, two run-ons built word by
word, pink noise at -50 dBFS) is saved as 44.1 kHz stereo MP3, as M4A and as MP4 with a video
track, all in one input folder, and goes through ``prepare_dataset`` with the real model.
With ``--similar rp`` (or ``m3``) the interview is two male voices that differ in accent only,
eight turns of 14-20 s with short pauses or none at the changes.
Targets: 0 edges inside a word, 0 clips with two voices, >= 70 % of the speech kept, both copies
found, no speaker or sentence on both sides of the split, >= 5x real time on 2 cores with tiny.en.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

from bench.interview import (
    LONG_SCRIPT_EXTRA,
    SHORT_SCRIPT,
    SIMILAR_CHANGE_PAUSES,
    SIMILAR_TURNS,
    SIMILAR_VOICES,
    Interview,
    Voiced,
    edges_inside_speech,
    make_interview,
    speakers_in,
    speech_covered,
    turns_script,
)
from utils import cli
from utils.data.audio import load_audio
from utils.data.csv_io import read_coqui_csv
from utils.data.prepare import SpeakerPlan, prepare_dataset
from utils.data.text import normalise_for_dedupe
from utils.data.transcribe import load_transcriber


class TimedTranscriber:
    """Counts the seconds spent in ASR, so the rest of data prep can be timed apart."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, audio16k, progress=None):
        t = time.perf_counter()
        try:
            return self.inner(audio16k, progress)
        finally:
            self.seconds += time.perf_counter() - t


def _offset_s(path: Path, reference: np.ndarray, sr: int) -> float:
    """Delay of the decoded ``path`` against the original (lossy codecs may add one)."""
    dec, _ = load_audio(path, sr)
    n = min(len(dec), len(reference), 10 * sr)
    a, b = dec[:n] - dec[:n].mean(), reference[:n] - reference[:n].mean()
    corr = np.fft.irfft(np.fft.rfft(a, 2 * n) * np.conj(np.fft.rfft(b, 2 * n)))
    lag = int(np.argmax(np.concatenate([corr[-sr // 10 :], corr[: sr // 10]]))) - sr // 10
    return lag / sr


def _media(iv: Interview, d: Path) -> list[Path]:
    base = ["ffmpeg", "-v", "error", "-y"]
    files = [d / "interview.mp3", d / "interview_copy.m4a", d / "interview_copy.mp4"]
    subprocess.run(base + ["-i", str(iv.path), "-ar", "44100", "-ac", "2", "-b:a", "128k", str(files[0])], check=True)
    subprocess.run(base + ["-i", str(iv.path), "-ar", "44100", "-ac", "2", "-c:a", "aac", str(files[1])], check=True)
    subprocess.run(
        base
        + [
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x64:r=5",
            "-i",
            str(iv.path),
            "-shortest",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-ar",
            "48000",
            "-ac",
            "2",
            str(files[2]),
        ],
        check=True,
    )
    return files


def _score(out: Path, rep: dict, voiced: list[Voiced]) -> dict:
    clips = sorted(rep["clips"].values(), key=lambda m: m["start"])
    edges = [e for m in clips for e in (m["start"], m["end"])]
    voices = [speakers_in(m["start"], m["end"], voiced) for m in clips]
    kept = speech_covered([(m["start"], m["end"]) for m in clips], voiced)
    tr, ev = read_coqui_csv(out / "metadata_train.csv"), read_coqui_csv(out / "metadata_eval.csv")
    margins = [m[k] for m in clips for k in ("margin_start_s", "margin_end_s") if m.get(k) is not None]
    return {
        "clips": len(clips),
        "edges": len(edges),
        "edges_inside_a_word": len(edges_inside_speech(edges, voiced)),
        "clips_with_two_voices": sum(len(v) > 1 for v in voices),
        "speech_kept_fraction": round(kept / sum(v.end - v.start for v in voiced), 4),
        "min_edge_margin_s": min(margins) if margins else None,
        "skipped": [(s["reason"], round(s["start"], 2)) for src in rep["sources"].values() for s in src["skipped"]],
        "duplicates_found": len(rep.get("duplicates", [])),
        "speakers_on_both_sides": sorted({r.speaker_name for r in tr} & {r.speaker_name for r in ev}),
        "sentences_on_both_sides": len(
            {normalise_for_dedupe(r.text) for r in tr} & {normalise_for_dedupe(r.text) for r in ev}
        ),
        "split_by": rep["split"]["by"],
        "review_flagged": rep["review"]["clips_flagged"],
    }


# --similar: two male voices that differ in accent only, eight turns of 14-20 s as run-ons, changes
# with short pauses or none (bench/interview.py's SIMILAR_TURNS)
SIMILAR = {"rp": SIMILAR_VOICES, "m3": {"host": "en-us", "guest": "en-us+m3"}}


def run(model: str, work: Path, device: str, similar: str | None = None) -> dict:
    if similar:
        script = turns_script(SIMILAR_TURNS, SIMILAR_CHANGE_PAUSES, runon=True)
        iv = make_interview(work / "interview.wav", script, voices=SIMILAR[similar])
    else:
        iv = make_interview(work / "interview.wav", SHORT_SCRIPT + LONG_SCRIPT_EXTRA)
    inputs = work / "inputs"
    inputs.mkdir()
    files = _media(iv, inputs)
    original, sr = load_audio(iv.path, None)
    offset = _offset_s(files[0], original, sr)
    voiced = [Voiced(v.start + offset, v.end + offset, v.speaker, v.text) for v in iv.voiced]
    asr = TimedTranscriber(load_transcriber(model, device=device, language="en"))
    t0, c0 = time.perf_counter(), os.times()
    rep = prepare_dataset(
        [inputs], work / "ds", transcriber=asr, speaker=SpeakerPlan(name="guest", others="keep"), progress=False
    )
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (
        (c1.user - c0.user)
        + (c1.system - c0.system)
        + (c1.children_user - c0.children_user)
        + (c1.children_system - c0.children_system)
    )
    result = _score(work / "ds", rep, voiced)
    result["edges_inside_a_word_at"] = edges_inside_speech(
        [e for m in rep["clips"].values() for e in (m["start"], m["end"])], voiced
    )
    result.update(
        {
            "audio_s": round(iv.duration, 2),
            "speech_s": round(iv.speech_seconds(), 2),
            "inputs": len(files),
            "decode_offset_s": round(offset, 4),
            "wall_s": round(wall, 2),
            "asr_s": round(asr.seconds, 2),
            "x_real_time": round(iv.duration / wall, 2),
            "x_real_time_asr_only": round(iv.duration / asr.seconds, 2),
            "cpu_s": round(cpu, 2),
            "cpu_s_per_audio_s": round(cpu / iv.duration, 3),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "device": device,
            "voices": SIMILAR[similar] if similar else "en-us, en-gb+f3",
            "cores": len(os.sched_getaffinity(0)),
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper-model", required=True, help="CTranslate2 model folder (e.g. tiny.en)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--cores", type=int, default=2, help="pin to this many CPU cores (0: no pinning)")
    p.add_argument("--out", help="write the result JSON here too")
    p.add_argument(
        "--similar",
        choices=sorted(SIMILAR),
        help="two similar male voices instead: en-us and British RP (rp) or en-us and its m3 variant (m3)",
    )
    p.add_argument("--work-dir", help="keep the interview, inputs and dataset here (default: a temporary folder)")
    args = p.parse_args(argv)
    cli.setup_logging()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=False)
        result = run(args.whisper_model, Path(args.work_dir), args.device, args.similar)
    else:
        with tempfile.TemporaryDirectory() as d:
            result = run(args.whisper_model, Path(d), args.device, args.similar)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
