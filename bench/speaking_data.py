"""Hours of espeak-ng speech in two voices, for training a small XTTS from random weights.

The sentences come from a seeded generator over a few hundred common English words (templates of
subject, verb, object, place and time), so a dataset of any size can be made without a text
corpus, and held-out sentences can be drawn that never occur in training. espeak-ng speaks each
sentence in one voice at a slightly varied speed and pitch, in parallel processes.

    from bench.speaking_data import build_speaking_dataset
    info = build_speaking_dataset("data/speak", hours=2.0, voices=("en-us", "en-us+f2"))

A bundled espeak-ng (``bash ../shared/gpu/bundle_espeak.sh .espeak`` style: ``bin/``, ``lib/``,
``espeak-ng-data/``) is used when ``espeak_dir`` is given, so the data can be made on a machine
without espeak-ng installed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

logger = logging.getLogger(__name__)

SAMPLE_RATE = 22050
SECONDS_PER_CHAR = 0.068  # espeak-ng en-us at 150-175 words per minute, measured on generated sentences

_SUBJECTS = (
    "the old man",
    "a young woman",
    "my brother",
    "her sister",
    "the teacher",
    "our neighbour",
    "the little boy",
    "a tired farmer",
    "the doctor",
    "my friend",
    "the driver",
    "his mother",
    "the children",
    "a tall stranger",
    "the baker",
    "our captain",
    "the students",
    "my father",
    "the police officer",
    "a happy girl",
    "the king",
    "the singer",
    "a quiet student",
    "the nurse",
)
_VERBS = (
    "found",
    "bought",
    "painted",
    "carried",
    "opened",
    "cleaned",
    "lost",
    "sold",
    "watched",
    "counted",
    "dropped",
    "moved",
    "fixed",
    "wanted",
    "borrowed",
    "brought",
    "closed",
    "washed",
    "picked up",
    "looked at",
    "talked about",
    "waited for",
    "asked for",
    "forgot",
)
_ADJECTIVES = (
    "red",
    "small",
    "heavy",
    "new",
    "old",
    "green",
    "bright",
    "broken",
    "wooden",
    "empty",
    "yellow",
    "long",
    "cold",
    "warm",
    "strange",
    "clean",
    "dark",
    "round",
    "soft",
    "blue",
)
_OBJECTS = (
    "box",
    "book",
    "window",
    "chair",
    "letter",
    "bottle",
    "basket",
    "table",
    "door",
    "coat",
    "garden",
    "bicycle",
    "picture",
    "lamp",
    "boat",
    "cup",
    "bag",
    "key",
    "clock",
    "horse",
    "river stone",
    "piano",
    "newspaper",
    "blanket",
    "map",
    "kettle",
)
_PLACES = (
    "in the kitchen",
    "near the station",
    "at the market",
    "behind the house",
    "by the river",
    "in the village",
    "on the hill",
    "at the school",
    "in the forest",
    "under the bridge",
    "at the harbour",
    "in the city",
    "on the farm",
    "next to the church",
    "in the garden",
)
_TIMES = (
    "this morning",
    "last night",
    "yesterday",
    "on sunday",
    "after lunch",
    "every day",
    "before dinner",
    "in the spring",
    "at noon",
    "last week",
    "early today",
    "late in the evening",
)
_NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty")


def _sentence(rng: random.Random) -> str:
    """One sentence from one of six templates."""
    s, v, a, o = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_ADJECTIVES), rng.choice(_OBJECTS)
    p, t, n = rng.choice(_PLACES), rng.choice(_TIMES), rng.choice(_NUMBERS)
    kind = rng.randrange(6)
    if kind == 0:
        text = f"{s} {v} the {a} {o} {p}."
    elif kind == 1:
        text = f"{t}, {s} {v} {n} {a} {o}s."
    elif kind == 2:
        text = f"did {s} see the {a} {o} {p}?"
    elif kind == 3:
        text = f"{s} {v} a {o} {t}, and then went home."
    elif kind == 4:
        text = f"the {o} {p} was {a}, so {s} {v} it."
    else:
        text = f"{s} said that the {o} was {a}."
    return text[0].upper() + text[1:]


def make_sentences(n: int, *, seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` distinct sentences, none of them in ``exclude``, in a seeded order."""
    rng = random.Random(seed)
    seen, out = set(exclude), []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"the generator ran out of new sentences after {len(out)} of {n}")
        text = _sentence(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


@dataclass(frozen=True)
class Espeak:
    """How to run espeak-ng: the system one, or a bundled folder (bin/, lib/, espeak-ng-data/)."""

    folder: Path | None = None

    def command(self, voice: str, speed: int, pitch: int, wav: Path, text: str) -> list[str]:
        if self.folder is None:
            exe, data = [shutil.which("espeak-ng") or "espeak-ng"], []
        else:
            exe, data = [str(self.folder / "bin" / "espeak-ng")], [f"--path={self.folder / 'espeak-ng-data'}"]
        return [*exe, *data, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.folder is not None:
            env["LD_LIBRARY_PATH"] = str(self.folder / "lib")
        return env


def speak_all(jobs: Sequence[tuple[str, str, Path]], espeak: Espeak, *, workers: int | None = None) -> list[float]:
    """Speak ``(text, voice, wav_path)`` jobs in parallel; returns each clip's seconds."""
    env = espeak.env()

    def one(i: int) -> float:
        text, voice, wav = jobs[i]
        speed, pitch = 150 + (i * 7) % 25, 35 + (i * 11) % 30
        subprocess.run(espeak.command(voice, speed, pitch, wav, text), check=True, capture_output=True, env=env)
        info = sf.info(str(wav))
        if info.samplerate != SAMPLE_RATE:
            raise RuntimeError(f"espeak-ng wrote {info.samplerate} Hz, expected {SAMPLE_RATE}")
        return info.frames / info.samplerate

    with ThreadPoolExecutor(max_workers=workers or min(32, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(one, range(len(jobs))))


def build_speaking_dataset(
    out_dir: str | Path,
    *,
    hours: float = 2.0,
    voices: Sequence[str] = ("en-us", "en-us+f2"),
    heldout: int = 20,
    n_eval: int = 40,
    seed: int = 0,
    espeak_dir: str | Path | None = None,
) -> dict:
    """Write a dataset folder (wavs/, metadata_train.csv, metadata_eval.csv) and heldout.json.

    Each voice reads its own sentences (about ``hours / len(voices)`` each); ``heldout`` further
    sentences, never spoken in training, go to ``heldout.json`` with one reference clip per voice
    (a training clip of that voice), for synthesis and scoring after training.
    """
    out = Path(out_dir)
    if (out / "metadata_train.csv").exists():
        raise FileExistsError(f"{out} already holds a dataset; choose an empty folder")
    held = make_sentences(heldout, seed=seed + 7919)
    per_voice = int(hours * 3600 / len(voices) / (SECONDS_PER_CHAR * 48)) + 1  # ~48 characters a sentence
    texts = make_sentences(per_voice * len(voices), seed=seed, exclude=held)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    jobs, rows = [], []
    for k, text in enumerate(texts):
        voice = voices[k % len(voices)]
        name = f"wavs/{k:05d}_{voice.replace('+', '_')}.wav"
        jobs.append((text, voice, out / name))
        rows.append((name, text, voice.replace("+", "_")))
    seconds = speak_all(jobs, Espeak(Path(espeak_dir) if espeak_dir else None))
    header = "audio_file|text|speaker_name\n"
    train, evals = rows[:-n_eval], rows[-n_eval:]
    for file_name, part in (("metadata_train.csv", train), ("metadata_eval.csv", evals)):
        (out / file_name).write_text(header + "".join(f"{a}|{t}|{s}\n" for a, t, s in part), encoding="utf-8")
    refs = {}
    for name, _text, speaker in train:
        refs.setdefault(speaker, str(out / name))
    info = {
        "hours": round(sum(seconds) / 3600, 3),
        "clips": len(rows),
        "voices": list(voices),
        "speakers": sorted(refs),
        "voice_of": {v.replace("+", "_"): v for v in voices},
        "references": refs,
        "heldout": held,
    }
    (out / "heldout.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    logger.info("%d clips, %.2f hours, voices %s, in %s", len(rows), info["hours"], ", ".join(voices), out)
    return info
