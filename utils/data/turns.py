"""Two similar voices taking turns: where one hands over to the other, found without a pause.

GE2E embeddings of two voices that differ only in accent (two men, one American and one British
speaker, say) sit as close together as two sentences of one voice, so clustering pieces of
speech at a fixed distance puts them in one cluster. Two things still tell them apart: each voice
holds for many seconds (a turn), and over many windows the small differences add up. This module
uses both:

1. Windows of whole words, about 1 s each (a window never starts or ends inside a word), each
   described by two cues: its GE2E embedding and the mean and spread of its 20 mel-cepstral
   coefficients (spectral shape, which carries accent and vocal tract), z-scored over the
   recording and reduced to a few principal components.
2. A two-state hidden Markov segmentation (Viterbi, a fixed log-likelihood cost per change of
   voice) on the windows' projection onto the direction that separates the two states best
   (Fisher's discriminant), re-estimated until the segmentation stops changing.
3. A test instead of a threshold: the segments are embedded whole, and their labels must explain
   the similarities between them better than the labels of almost every other way of dealing
   the same segments into two voices (an exact permutation test, p <= 0.05). One voice whose
   style changes gives segments that no labelling explains; the test needs at least seven
   segments (with fewer there are too few ways to deal them for p <= 0.05).
4. Each change is then placed at the word boundary near its windows where the features of the
   words before and after it fit the two voices best (a change-point search, a pause there
   counting for it). The boundaries that score almost as well form the change's confidence set;
   the words between its first and last boundary are marked uncertain, and no clip holds them.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

ENCODER_SR = 16000  # the GE2E encoder's sample rate (Resemblyzer)


@dataclass(frozen=True)
class TurnOptions:
    """How two similar voices are told apart.

    Attributes:
        window_s: windows are runs of whole words at least this long.
        dims: principal components of the z-scored window features kept (16: with 10, the first
            turns of a two-voice interview merged into one on MP3-decoded audio).
        change_cost: log-likelihood a change of voice must gain (in units where the two voices'
            windows lie about d'^2/2 apart per window): 8 asks for about four windows of evidence.
        max_p: the permutation test's level.
        iterations: re-estimations of the discriminant at most.
        change_context_s: speech on each side of the two windows around a change that the
            placement of the change looks at.
        word_context_s: each word's evidence comes from the words within this of its middle.
        confidence: boundaries scoring within this of the best are kept as possible changes (on
            the generated interviews 4 marked no more than 0 did; 8 removed most mixed clips
            for 1-3% of the speech; 14 cost 3-7% more and removed no more).
        pause_weight: log-likelihood a pause of ``pause_full_s`` or more adds to a boundary.
    """

    window_s: float = 1.0
    dims: int = 16
    change_cost: float = 6.0
    max_p: float = 0.05
    iterations: int = 10
    change_context_s: float = 2.0
    word_context_s: float = 0.8
    confidence: float = 8.0
    pause_weight: float = 3.0
    pause_full_s: float = 0.25


@dataclass
class Turns:
    """The two voices' turns: a label (0 or 1) per word, unit centroids and the test's result."""

    per_word: np.ndarray
    centroids: np.ndarray
    segments: int
    p_value: float
    uncertain: np.ndarray  # words near a change that neither voice explains clearly better


def word_windows(words: Sequence, window_s: float) -> list[tuple[int, int]]:
    """(first, last) word of consecutive windows of whole words, each at least ``window_s`` long.

    A short remainder at the end joins the window before it.
    """
    out: list[tuple[int, int]] = []
    a = 0
    while a < len(words):
        b = a
        while b + 1 < len(words) and words[b].end - words[a].start < window_s:
            b += 1
        out.append((a, b))
        a = b + 1
    if len(out) > 1 and words[out[-1][1]].end - words[out[-1][0]].start < window_s / 2:
        out[-2:] = [(out[-2][0], out[-1][1])]
    return out


_N_CEPSTRA = 20


def _dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II rows (mel-cepstral coefficients from log mel energies)."""
    k, n = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    m[0] /= math.sqrt(2.0)
    return m.astype(np.float32)


def window_features(words: Sequence, windows: Sequence[tuple[int, int]], audio16k: np.ndarray, encoder) -> np.ndarray:
    """Per window: GE2E embedding (256) and mean and spread of 20 mel-cepstra over its words' frames (40)."""
    spans = [(words[a].start, words[b].end) for a, b in windows]
    wavs = [audio16k[int(s * ENCODER_SR) : int(e * ENCODER_SR)] for s, e in spans]
    ge2e = encoder.embed_windows(wavs)
    dct = _dct_matrix(_N_CEPSTRA, 40)
    cep = []
    for (a, b), (s, _), wav in zip(windows, spans, wavs):
        mel = encoder.mel(np.asarray(wav, dtype=np.float32))
        frames = np.zeros(len(mel), dtype=bool)
        for w in words[a : b + 1]:  # voiced frames only: the words, not the pauses between them
            frames[max(0, int((w.start - s) * 100)) : int(math.ceil((w.end - s) * 100))] = True
        c = np.log(mel[frames] + 1e-6) @ dct.T if frames.sum() > 2 else np.log(mel + 1e-6) @ dct.T
        cep.append(np.concatenate([c.mean(axis=0), c.std(axis=0)]))
    return np.concatenate([ge2e, np.asarray(cep, dtype=np.float32)], axis=1)


def _reduce(features: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each feature over the recording, keep the top ``dims`` principal components.

    Returns:
        (projected windows, mean, scale, components), so other spans can be projected the same way.
    """
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-9
    z = (features - mean) / scale
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    comps = vt[: min(dims, len(vt))]
    return z @ comps.T, mean, scale, comps


def _fisher(y: np.ndarray, labels: np.ndarray, shrink: float = 0.1) -> np.ndarray:
    """Fisher's discriminant direction between the two labels, scaled to unit within-class spread."""
    a, b = y[labels == 0], y[labels == 1]
    within = np.cov(np.concatenate([a - a.mean(axis=0), b - b.mean(axis=0)]).T).reshape(y.shape[1], y.shape[1])
    within = within + shrink * np.trace(within) / len(within) * np.eye(len(within))
    w = np.linalg.solve(within, a.mean(axis=0) - b.mean(axis=0))
    return w / math.sqrt(float(w @ within @ w))


def _viterbi(loglik: np.ndarray, change_cost: float) -> np.ndarray:
    """The two-state path with the highest log-likelihood, ``change_cost`` paid per change."""
    n = len(loglik)
    score = loglik[0].copy()
    back = np.zeros((n, 2), dtype=int)
    for t in range(1, n):
        new = np.empty(2)
        for s in (0, 1):
            stay, move = score[s], score[1 - s] - change_cost
            back[t, s] = s if stay >= move else 1 - s
            new[s] = max(stay, move) + loglik[t, s]
        score = new
    path = np.zeros(n, dtype=int)
    path[-1] = int(np.argmax(score))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


@dataclass(frozen=True)
class _Voices:
    """The discriminant direction and the two voices' means and spread along it."""

    direction: np.ndarray
    means: tuple[float, float]
    sd: float

    @classmethod
    def fit(cls, y: np.ndarray, labels: np.ndarray) -> _Voices:
        w = _fisher(y, labels)
        p = y @ w
        means = (float(p[labels == 0].mean()), float(p[labels == 1].mean()))
        sd = float(np.sqrt(np.mean((p - np.where(labels == 1, means[1], means[0])) ** 2))) + 1e-9
        return cls(w, means, sd)

    def loglik(self, y: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(y) @ self.direction
        return np.stack([-((p - m) ** 2) / (2 * self.sd**2) for m in self.means], axis=1)


def segment_two_voices(y: np.ndarray, opts: TurnOptions) -> tuple[np.ndarray, _Voices | None]:
    """Two-state segmentation of the windows ``y`` (Viterbi on the Fisher projection, re-estimated).

    Starts from the principal direction of the windows' 5-window moving average (slow changes,
    where turns show) split at its median.
    """
    kernel = np.ones(5) / 5
    smooth = np.stack([np.convolve(y[:, j], kernel, mode="same") for j in range(y.shape[1])], axis=1)
    _, _, vt = np.linalg.svd(smooth - smooth.mean(axis=0), full_matrices=False)
    z = np.convolve(y @ vt[0], kernel, mode="same")
    labels = (z > np.median(z)).astype(int)
    voices = None
    for _ in range(opts.iterations):
        if labels.min() == labels.max() or min(np.bincount(labels)) < 2:
            return np.zeros(len(y), dtype=int), None
        voices = _Voices.fit(y, labels)
        new = _viterbi(voices.loglik(y), opts.change_cost)
        if np.array_equal(new, labels):
            break
        labels = new
    if labels.min() == labels.max():
        return labels, None
    return labels, voices


def runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) of each run of equal labels."""
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
    return list(zip(starts, starts[1:] + [len(labels)]))


def permutation_p(similarity: np.ndarray, labels: Sequence[int], max_exact: int = 20000, seed: int = 0) -> float:
    """How often dealing the segments into two groups of the same sizes explains their similarities
    at least as well as ``labels`` (mean similarity within a voice minus across voices).

    Exact over every dealing when there are at most ``max_exact`` of them, else 20,000 random ones.
    """
    labels = np.asarray(labels)
    n, n1 = len(labels), int(labels.sum())
    iu = np.triu_indices(n, 1)

    def stat(lab: np.ndarray) -> float:
        same = lab[iu[0]] == lab[iu[1]]
        if same.all() or not same.any():
            return -np.inf
        return float(similarity[iu][same].mean() - similarity[iu][~same].mean())

    observed = stat(labels)
    if math.comb(n, n1) <= max_exact:
        dealings = (np.isin(np.arange(n), c).astype(int) for c in itertools.combinations(range(n), n1))
    else:
        rng = np.random.default_rng(seed)
        dealings = (rng.permutation(labels) for _ in range(20000))
    hits = total = 0
    for lab in dealings:
        total += 1
        hits += stat(lab) >= observed - 1e-12
    return hits / total


def find_turns(
    words: Sequence,
    audio16k: np.ndarray,
    encoder,
    opts: TurnOptions = TurnOptions(),
    *,
    gaps: Sequence | None = None,
    two_voices: bool = False,
) -> Turns | None:
    """Two voices' turns in one recording, or None when the recording does not show two.

    Args:
        words: recognised words in time order, snapped to the audio.
        audio16k: the recording at 16 kHz.
        encoder: a :class:`~utils.data.speakers.SpeakerEncoder`.
        gaps: the pause after each word but the last (None where there is none): a cue for where
            a change of voice falls.
        two_voices: the user said there are two (``--num-speakers 2``): any segmentation into two
            is taken, without the permutation test.

    Returns:
        Turns with a label per word, or None (one voice, too little speech, or the test failed).
    """
    windows = word_windows(words, opts.window_s)
    if len(windows) < 14:  # seven segments of two windows at the very least
        return None
    feats = window_features(words, windows, audio16k, encoder)
    y, mean, scale, comps = _reduce(feats, opts.dims)
    labels, voices = segment_two_voices(y, opts)
    if voices is None:
        return None
    segs = runs(labels)
    seg_audio = [
        audio16k[int(words[windows[a][0]].start * ENCODER_SR) : int(words[windows[b - 1][1]].end * ENCODER_SR)]
        for a, b in segs
    ]
    emb = encoder.embed_many(seg_audio)
    seg_labels = [int(labels[a]) for a, _ in segs]
    p = permutation_p(emb @ emb.T, seg_labels)
    logger.info("two-voice turns: %d segments, permutation test p = %.3f", len(segs), p)
    if p > opts.max_p and not two_voices:
        return None

    def project(spans: list[tuple[int, int]]) -> np.ndarray:
        return ((window_features(words, spans, audio16k, encoder) - mean) / scale) @ comps.T

    per_word, uncertain = place_changes(words, windows, labels, voices.loglik, project, gaps, opts)
    weights = np.array([b - a for a, b in segs], dtype=float)
    centroids = np.stack(
        [(emb[np.array(seg_labels) == k] * weights[np.array(seg_labels) == k, None]).sum(0) for k in (0, 1)]
    )
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return Turns(per_word, centroids, len(segs), p, uncertain)


def place_changes(
    words: Sequence,
    windows: Sequence[tuple[int, int]],
    labels: np.ndarray,
    loglik: Callable[[np.ndarray], np.ndarray],
    project: Callable[[list[tuple[int, int]]], np.ndarray],
    gaps: Sequence | None = None,
    opts: TurnOptions = TurnOptions(),
) -> tuple[np.ndarray, np.ndarray]:
    """A label per word, each change of voice moved to the best word boundary near its windows,
    and which words lie where the evidence cannot tell on which side of the change they are.

    Every word around a change gets the log-likelihood ratio of the two voices from the words
    within ``word_context_s`` of its middle; the change goes to the boundary that maximises the
    cumulative sum of the ratios before it minus those after it (the least-squares change point),
    searched from ``change_context_s`` before the window ending the old turn to as far after the
    window starting the new one, plus up to ``pause_weight`` for a pause there (people rarely
    hand over in the middle of a phrase, and only a pause can be cut cleanly). Boundaries that
    score within ``confidence`` of the best form the change's confidence set: the words between
    its first and last boundary are marked uncertain.

    Args:
        loglik: projected features -> (n, 2) log-likelihoods of the two voices.
        project: word spans [(first, last)] -> their projected features.
        gaps: the pause after each word but the last (None where there is none).
    """
    per_word = np.zeros(len(words), dtype=int)
    uncertain = np.zeros(len(words), dtype=bool)
    for (a, _), lab in zip(windows, labels):
        per_word[a:] = lab
    changes = [int(u) for u in np.flatnonzero(labels[1:] != labels[:-1])]
    bounds = [0] + [windows[u + 1][0] for u in changes] + [len(words)]
    for k, u in enumerate(changes):
        old, new = int(labels[u]), int(labels[u + 1])
        # never past the middle of a neighbouring turn
        lo = max(_reach(words, windows[u][0], -opts.change_context_s), (bounds[k] + bounds[k + 1]) // 2)
        hi = min(_reach(words, windows[u + 1][1], opts.change_context_s), (bounds[k + 1] + bounds[k + 2]) // 2)
        hi = max(hi, lo + 1)
        ll = loglik(project([_around(words, w, opts.word_context_s) for w in range(lo, hi + 1)]))
        cusum = np.cumsum(ll[:, old] - ll[:, new])
        cands = np.arange(lo, hi)
        score = 2 * cusum[cands - lo] - cusum[-1]
        if gaps is not None:
            width = np.array([gaps[j].width if gaps[j] is not None else 0.0 for j in cands])
            score = score + opts.pause_weight * np.minimum(width, opts.pause_full_s) / opts.pause_full_s
        best = int(cands[int(np.argmax(score))])
        per_word[lo : best + 1] = old
        per_word[best + 1 : hi + 1] = new
        near = cands[score >= score.max() - opts.confidence]
        uncertain[int(near.min()) + 1 : int(near.max()) + 1] = True
    return per_word, uncertain


def _around(words: Sequence, i: int, half_s: float) -> tuple[int, int]:
    """The words within ``half_s`` of the middle of word ``i`` (word ``i`` at least)."""
    mid = (words[i].start + words[i].end) / 2
    a, b = i, i
    while a > 0 and words[a - 1].start >= mid - half_s:
        a -= 1
    while b + 1 < len(words) and words[b + 1].end <= mid + half_s:
        b += 1
    return a, b


def _reach(words: Sequence, i: int, seconds: float) -> int:
    """The farthest word from word ``i`` (back for negative ``seconds``) within that many seconds of it."""
    j = i
    if seconds < 0:
        while j > 0 and words[j - 1].start >= words[i].end + seconds:
            j -= 1
    else:
        while j + 1 < len(words) and words[j + 1].end <= words[i].start + seconds:
            j += 1
    return j
