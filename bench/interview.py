"""A generated two-voice interview with known speech times, for the data-prep tests and benchmark.

Two espeak-ng voices take turns (whole sentences, pauses of known length between turns); run-on
passages are built word by word (each word spoken alone, trimmed, joined by short gaps), so every
word's time is known. Light pink noise is added. The truth lists every voiced interval with its
speaker, so clip edges and clip speakers can be checked against it with numbers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from utils.demo import SAMPLE_RATE, espeak_to_wav

logger = logging.getLogger(__name__)

# en-gb with the f3 (female) variant: this espeak-ng build ignores a variant on the "en-gb" alias
# ("en-gb+f3" speaks the male default), so the voice file is named directly
VOICES = {"host": "en-us", "guest": "gmw/en+f3"}
# Two male voices that differ only in accent: espeak-ng's one male voice model speaking American
# and British (received pronunciation) English, at the same pitch. GE2E puts their turns 0.96
# apart (cosine of the turn centroids), closer than two sentences of one voice often are.
SIMILAR_VOICES = {"host": "en-us", "guest": "gmw/en-GB-x-rp"}

# (speaker, text, pause after in seconds); "RUNON:" texts are built word by word
SHORT_SCRIPT: tuple[tuple[str, str, float], ...] = (
    ("host", "Welcome to the show, it is good to have you here today.", 0.8),
    ("guest", "Thank you, I am very happy to be here.", 0.5),
    ("host", "Tell us how the project started.", 1.2),
    (
        "guest",
        "RUNON:It started with a small idea about reading old letters aloud, then we asked friends "
        "to record their voices, and soon we had hours of speech from many people who wanted "
        "to help us build something useful for everyone.",
        0.6,
    ),
    ("host", "That sounds wonderful.", 0.4),
    ("guest", "It was a lot of work, but we learned a great deal.", 1.5),
    ("host", "What comes next for you?", 0.7),
    ("guest", "More languages, and better tools for the people who record.", 0.5),
)

LONG_SCRIPT_EXTRA: tuple[tuple[str, str, float], ...] = (
    ("host", "How many people took part in the first year?", 0.9),
    ("guest", "About two hundred, most of them students from the city.", 0.3),
    ("host", "Did anything surprise you along the way?", 1.1),
    ("guest", "Yes, the older speakers were the most patient readers.", 0.6),
    (
        "host",
        "RUNON:We also found that quiet rooms matter more than good microphones, because every "
        "small noise in the background ends up in the data, and the model learns it together "
        "with the voice, which nobody wants to hear in the final result.",
        0.8,
    ),
    ("guest", "I agree completely.", 0.4),
    ("host", "Where can listeners learn more about the project?", 1.0),
    ("guest", "Our website has the recordings and the stories behind them.", 0.5),
    ("host", "Before we finish, what would you tell someone who wants to start a similar project?", 0.8),
    ("guest", "Start small, record every day, and listen to everything you record.", 0.5),
    ("host", "Is there a mistake you would avoid next time?", 1.3),
    ("guest", "We kept some noisy files for too long, and they cost us weeks later on.", 0.4),
    ("host", "How did you fix that?", 0.6),
    ("guest", "We checked each clip by ear and wrote down every problem we heard.", 2.0),
    ("host", "Thank you for coming.", 0.6),
    ("guest", "It was a pleasure.", 1.0),
)


# Eight turns of three or four sentences (14-20 s each as run-ons); :func:`turns_script` builds the script.
SIMILAR_TURNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "host",
        (
            "Good evening and welcome back to the program.",
            "Tonight we talk about the small towns along the northern coast.",
            "Many of them have changed a great deal over the last twenty years.",
            "My guest has spent most of that time walking from one harbour to the next.",
        ),
    ),
    (
        "guest",
        (
            "I grew up in a fishing village with about four hundred people.",
            "When the herring left the bay, the young people left with them.",
            "I was one of them, and it took me a long time to come back.",
        ),
    ),
    (
        "host",
        (
            "What brought you back in the end?",
            "Was it the work, or was it something more personal?",
            "They leave for the city, they find good jobs there, and then they miss the sea.",
            "Some of them even move back after they retire.",
        ),
    ),
    (
        "guest",
        (
            "It was a letter from my grandmother.",
            "She wrote that the old school would close at the end of the summer.",
            "We opened a small museum in the school building instead.",
            "Now the children come there every Friday to hear the old stories.",
        ),
    ),
    (
        "host",
        (
            "That is a remarkable thing to have done.",
            "How did the village react when you started the museum?",
            "Change is never easy in a small place, and money is always short.",
        ),
    ),
    (
        "guest",
        (
            "Some of the older men thought it was a waste of money.",
            "But they came to the opening anyway, and they brought their photographs.",
            "One of them talked for two hours about a storm in the winter of nineteen sixty.",
            "After that evening nobody complained again.",
        ),
    ),
    (
        "host",
        (
            "We have a few minutes left before the news.",
            "What would you tell a young person who wants to leave a village like yours?",
            "It is a hard question, I know, and there is no right answer.",
        ),
    ),
    (
        "guest",
        (
            "I would tell them to go and see the world.",
            "But I would also tell them to write down the stories before they leave.",
            "The people who remember are getting older every year.",
            "Once they are gone, nobody can ask them anymore.",
        ),
    ),
)
# The pause at each change of speaker: short, and none at all (under 0.1 s) at three of the seven.
SIMILAR_CHANGE_PAUSES = (0.3, 0.05, 0.25, 0.0, 0.2, 0.06, 0.3)


def turns_script(
    turns: Sequence[tuple[str, Sequence[str]]],
    change_pauses: Sequence[float],
    sentence_pause_s: tuple[float, float] = (0.3, 0.5),
    seed: int = 1,
    *,
    runon: bool = False,
) -> tuple[tuple[str, str, float], ...]:
    """A script for :func:`make_interview` from whole turns.

    Sentences of one turn are separated by pauses drawn from ``sentence_pause_s`` (longer than
    most pauses at a change of speaker, so pauses alone do not tell where a turn ends); the
    pause after turn k is ``change_pauses[k]`` (1 s after the last turn). With ``runon`` each
    turn is one run-on built word by word (every word's time known; 0.3-0.5 s after a sentence,
    30-50 ms between words, 120-220 ms after a comma).
    """
    rng = np.random.default_rng(seed)
    script = []
    for k, (speaker, sentences) in enumerate(turns):
        if runon:
            pause = float(change_pauses[k]) if k < len(change_pauses) else 1.0
            script.append((speaker, "RUNON:" + " ".join(sentences), pause))
            continue
        for i, text in enumerate(sentences):
            if i + 1 < len(sentences):
                pause = float(rng.uniform(*sentence_pause_s))
            else:
                pause = float(change_pauses[k]) if k < len(change_pauses) else 1.0
            script.append((speaker, text, pause))
    return tuple(script)


@dataclass(frozen=True)
class Voiced:
    """One known voiced interval (a word of a run-on, or a whole sentence) and who said it."""

    start: float
    end: float
    speaker: str
    text: str


@dataclass
class Interview:
    """The generated recording and its truth."""

    path: Path
    sr: int
    duration: float
    voiced: list[Voiced] = field(default_factory=list)

    def speech_seconds(self) -> float:
        return float(sum(v.end - v.start for v in self.voiced))


def _trim(audio: np.ndarray, sr: int, rel_db: float = -30.0) -> np.ndarray:
    """Cut leading/trailing silence: keep 5 ms frames within ``rel_db`` of the loudest frame.

    This is the known extent of a word: its clean signal within 30 dB of its loudest frame
    (fainter tails sink into the added noise, where no detector can see them).
    """
    hop = max(1, sr // 200)
    n = len(audio) // hop
    rms = np.sqrt(np.mean(np.square(audio[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (rel_db / 20))
    if loud.size == 0:
        return audio[:0]
    return audio[loud[0] * hop : (loud[-1] + 1) * hop]


def _speak(text: str, voice: str, tmp: Path, speed: int) -> np.ndarray:
    p = espeak_to_wav(text, tmp / "w.wav", voice=voice, speed=speed)
    audio, sr = sf.read(str(p), dtype="float32")
    assert sr == SAMPLE_RATE
    return _trim(audio, sr)


def _pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
    noise = np.fft.irfft(spec, n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def _runon(text: str, voice: str, tmp: Path, speed: int) -> tuple[list[np.ndarray], list[str]]:
    """Each word spoken on its own (the caller joins them with gaps of known length)."""
    words = text.split()
    return [_speak(w.strip(",.?!"), voice, tmp, speed) for w in words], words


def _runon_gap(word: str, rng: np.random.Generator) -> float:
    """The pause after a word of a run-on: 0.3-0.5 s after a sentence, 120-220 ms after a comma, else 30-50 ms."""
    if word.endswith((".", "?", "!")):
        return float(rng.uniform(0.3, 0.5))
    return float(rng.uniform(0.12, 0.22) if word.endswith(",") else rng.uniform(0.03, 0.05))


def make_interview(
    out_path: str | Path,
    script: Sequence[tuple[str, str, float]] = SHORT_SCRIPT,
    *,
    noise_db: float = -50.0,
    speed: int = 165,
    seed: int = 0,
    voices: Mapping[str, str] = VOICES,
) -> Interview:
    """Write the interview as a 22.05 kHz mono WAV at ``out_path`` and return its truth.

    Args:
        script: (speaker, text, pause after) per turn; speakers are keys of ``voices`` (espeak-ng
            voice names, default :data:`VOICES`). In a
            run-on, words are joined by gaps of 30-50 ms, 120-220 ms after a comma.
        noise_db: pink-noise level in dB full scale (RMS).
    """
    rng = np.random.default_rng(seed)
    sr = SAMPLE_RATE
    out_path = Path(out_path)
    chunks: list[np.ndarray] = [np.zeros(int(0.6 * sr), dtype=np.float32)]
    t = 0.6
    voiced: list[Voiced] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for speaker, text, pause in script:
            voice = voices[speaker]
            if text.startswith("RUNON:"):
                parts, words = _runon(text[len("RUNON:") :], voice, tmp, speed)
                for k, (a, w) in enumerate(zip(parts, words)):
                    voiced.append(Voiced(t, t + len(a) / sr, speaker, w))
                    chunks.append(a)
                    t += len(a) / sr
                    if k + 1 < len(parts):
                        gap = _runon_gap(w, rng)
                        chunks.append(np.zeros(int(gap * sr), dtype=np.float32))
                        t += int(gap * sr) / sr
            else:
                a = _speak(text, voice, tmp, speed)
                voiced.append(Voiced(t, t + len(a) / sr, speaker, text))
                chunks.append(a)
                t += len(a) / sr
            chunks.append(np.zeros(int(pause * sr), dtype=np.float32))
            t += int(pause * sr) / sr
    audio = np.concatenate(chunks)
    audio = 0.5 * audio / max(1e-6, float(np.max(np.abs(audio))))
    audio = audio + _pink_noise(len(audio), rng) * 10 ** (noise_db / 20)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out_path), audio.astype(np.float32), sr, subtype="PCM_16")
    logger.info("interview: %.1f s, %d voiced intervals -> %s", len(audio) / sr, len(voiced), out_path)
    return Interview(out_path, sr, len(audio) / sr, voiced)


def edges_inside_speech(edges: Sequence[float], voiced: Sequence[Voiced], tol_s: float = 0.0) -> list[float]:
    """The edges that fall strictly inside a known voiced interval (shrunk by ``tol_s``)."""
    return [e for e in edges if any(v.start + tol_s < e < v.end - tol_s for v in voiced)]


def speakers_in(start: float, end: float, voiced: Sequence[Voiced], min_overlap_s: float = 0.02) -> set[str]:
    """Speakers whose known speech overlaps [start, end] by more than ``min_overlap_s``."""
    return {v.speaker for v in voiced if min(end, v.end) - max(start, v.start) > min_overlap_s}


def speech_covered(spans: Sequence[tuple[float, float]], voiced: Sequence[Voiced]) -> float:
    """Seconds of known speech inside the union of ``spans``."""
    total = 0.0
    for v in voiced:
        for s, e in spans:
            total += max(0.0, min(e, v.end) - max(s, v.start))
    return total
