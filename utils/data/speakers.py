"""Who speaks when: speaker turns and per-recording speaker clusters from GE2E embeddings.

The encoder is Resemblyzer's GE2E model (its weights ship inside the wheel, so it runs offline).
Words are grouped into pieces at pauses of at least ``turn_gap_s`` (and long pieces split at
their widest inter-word gap); each piece long enough is embedded, and the pieces are clustered
(average-linkage agglomerative clustering on cosine distance), so the labels are consistent
across the recording. Short pieces take the label of the nearest cluster. Inside a piece, 1.6 s
windows every 0.4 s find a change of voice without a pause, when each voice holds for a window.
Two voices too alike for the clustering (one cluster, or two that are not the voices) are looked
for as turns: :mod:`utils.data.turns` segments word-aligned windows on two cues and accepts the
result only when a permutation test says the turns are two voices.
Overlapping speech is not separated; pyannote's diarisation (downloadable, see the README) is
the stronger tool for that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from utils.data.boundaries import Gap
from utils.data.turns import ENCODER_SR

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeakerOptions:
    """How turns are found and clustered.

    Attributes:
        turn_gap_s: pauses at least this long may separate two speakers' turns.
        min_piece_s: pieces shorter than this are not clustered (too little voice), only assigned.
        max_piece_s: longer pieces are split at their widest inter-word gap.
        threshold: cosine distance at which clusters stop merging.
        num_speakers: force this many clusters (None: decided by ``threshold``).
        similar_voices: also look for two similar voices taking turns (see :mod:`utils.data.turns`),
            which the clustering puts in one cluster.
    """

    turn_gap_s: float = 0.2
    min_piece_s: float = 0.8
    max_piece_s: float = 3.0
    threshold: float = 0.33
    num_speakers: int | None = None
    similar_voices: bool = True


@dataclass
class SpeakerLabels:
    """A speaker index per word (0 = the most speech, or the reference voice) and the evidence."""

    per_word: list[int]
    seconds: dict[int, float] = field(default_factory=dict)
    pieces: int = 0
    reference_similarity: dict[int, float] = field(default_factory=dict)
    uncertain: list[bool] = field(default_factory=list)  # near a change of similar voices, side unclear

    def for_segments(self) -> list[int]:
        """``per_word`` with the uncertain words as :data:`~utils.data.segment.UNCERTAIN_SPEAKER`."""
        from utils.data.segment import UNCERTAIN_SPEAKER

        unsure = self.uncertain or [False] * len(self.per_word)
        return [UNCERTAIN_SPEAKER if u else s for s, u in zip(self.per_word, unsure, strict=True)]


def _hz_to_slaney_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log_start = 1000.0 / (200.0 / 3)
    return np.where(f >= 1000.0, log_start + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), lin)


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    log_start = 1000.0 / (200.0 / 3)
    return np.where(m >= log_start, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - log_start)), m * (200.0 / 3))


def slaney_mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's default mel filterbank (Slaney scale and area normalisation, 0 Hz to sr/2).

    Computed here because importing librosa costs seconds in a fresh process; equal to
    ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)`` (checked in the tests).
    """
    fft_hz = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_hz = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(0.0), _hz_to_slaney_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2 : n_mels + 2] - mel_hz[:n_mels]))[:, None]
    return weights.astype(np.float32)


class SpeakerEncoder:
    """Resemblyzer's GE2E ``VoiceEncoder``, loaded on first use, embedding many pieces in one batch.

    ``VoiceEncoder.embed_utterance`` embeds one utterance at a time and computes its mel
    spectrogram with librosa (several seconds of one-off start-up in a fresh process); here the
    same 40-band mel (25 ms Hann window, 10 ms hop, power, Slaney filters, as Resemblyzer's
    ``audio.wav_to_mel_spectrogram``) is computed with numpy, and the partial windows of all
    pieces go through the LSTM together. The partial windows come from the encoder's own
    ``compute_partial_slices``.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._enc = None
        self._fb: np.ndarray | None = None
        self._lock = threading.Lock()

    def _encoder(self):
        with self._lock:
            if self._enc is None:
                from resemblyzer import VoiceEncoder

                self._enc = VoiceEncoder(device=self.device, verbose=False)
        return self._enc

    def warm_up(self) -> threading.Thread:
        """Import torch and load the encoder in a background thread (e.g. while the ASR runs)."""
        t = threading.Thread(target=self._encoder, name="ge2e-load", daemon=True)
        t.start()
        return t

    def mel(self, wav: np.ndarray) -> np.ndarray:
        """Resemblyzer's 40-band mel power spectrogram of 16 kHz audio, (frames, 40), 10 ms hop."""
        n_fft, hop = 400, 160
        if self._fb is None:
            self._fb = slaney_mel_filters(ENCODER_SR, n_fft, 40)
        x = np.pad(wav, n_fft // 2)
        n = 1 + (len(x) - n_fft) // hop
        idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
        window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        power = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2
        return (power.astype(np.float32) @ self._fb.T).astype(np.float32)

    def partial_embeddings(
        self, wavs: Sequence[np.ndarray], rate: float = 1.3, min_coverage: float = 0.75
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """GE2E embeddings of the 1.6 s partial windows of each piece (each volume-normalised first).

        Returns:
            (embeddings (n, 256), index of the piece each window belongs to, window start in s).
        """
        import torch

        enc = self._encoder()
        mels, owner, starts = [], [], []
        for k, w in enumerate(wavs):
            w = _normalise_volume(w)
            wav_slices, mel_slices = enc.compute_partial_slices(len(w), rate, min_coverage)
            if wav_slices[-1].stop > len(w):
                w = np.pad(w, (0, wav_slices[-1].stop - len(w)))
            mel = self.mel(w)
            for ws, ms in zip(wav_slices, mel_slices):
                mels.append(mel[ms])
                owner.append(k)
                starts.append(ws.start / ENCODER_SR)
        threads = torch.get_num_threads()
        # one thread: the small LSTM gains little from more, and on a busy CPU it runs several times faster
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                partial = enc(torch.from_numpy(np.stack(mels)).to(enc.device)).cpu().numpy()
        finally:
            torch.set_num_threads(threads)
        return partial, np.asarray(owner), np.asarray(starts)

    def embed_windows(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """One GE2E embedding per window, each through the LSTM whole (any length, no partial windows).

        Windows shorter than GE2E's 1.6 s partials are what finds a voice change between words;
        each is volume-normalised like Resemblyzer's input. Returns L2-normalised rows (n, 256).
        """
        import torch

        enc = self._encoder()
        mels = [torch.from_numpy(self.mel(_normalise_volume(w))) for w in wavs]
        lengths = torch.tensor([max(1, len(m)) for m in mels])
        padded = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in partial_embeddings
        try:
            with torch.no_grad():
                _, (hidden, _) = enc.lstm(packed.to(enc.device))
                raw = enc.relu(enc.linear(hidden[-1]))
        finally:
            torch.set_num_threads(threads)
        out = raw.cpu().numpy()
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def embed_many(self, wavs: Sequence[np.ndarray], rate: float = 1.3, min_coverage: float = 0.75) -> np.ndarray:
        """L2-normalised 256-d embeddings of 16 kHz mono pieces (the mean of their partial windows)."""
        partial, owner, _ = self.partial_embeddings(wavs, rate, min_coverage)
        out = np.stack([partial[owner == k].mean(axis=0) for k in range(len(wavs))])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed(self, audio16k: np.ndarray) -> np.ndarray:
        """Embedding of one piece of 16 kHz speech."""
        return self.embed_many([audio16k])[0]


def _normalise_volume(wav: np.ndarray) -> np.ndarray:
    """float32 at -30 dBFS RMS, Resemblyzer's input level (silence stays as it is)."""
    w = np.asarray(wav, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) if w.size else 0.0
    return w * np.float32(10 ** (-30 / 20) / rms) if rms > 1e-6 else w


def _pieces(words: Sequence, gaps: Sequence[Gap | None], opts: SpeakerOptions) -> list[tuple[int, int]]:
    """Word ranges between pauses of ``turn_gap_s``; longer than ``max_piece_s`` split at their widest gap.

    Short pieces keep a voice change without a real pause from blending two voices into one
    embedding (which would pull the two clusters together).
    """
    out, first = [], 0
    for i, g in enumerate(gaps):
        if g is not None and g.width >= opts.turn_gap_s:
            out.append((first, i))
            first = i + 1
    out.append((first, len(words) - 1))
    return [q for a, b in out for q in _split_piece(words, gaps, a, b, opts)]


def _split_piece(
    words: Sequence, gaps: Sequence[Gap | None], a: int, b: int, opts: SpeakerOptions
) -> list[tuple[int, int]]:
    if words[b].end - words[a].start <= opts.max_piece_s:
        return [(a, b)]
    best, width = None, -1.0
    for i in range(a, b):
        g = gaps[i]
        if (
            g is not None
            and g.width > width
            and words[i].end - words[a].start >= opts.min_piece_s
            and words[b].end - words[i + 1].start >= opts.min_piece_s
        ):
            best, width = i, g.width
    if best is None:
        return [(a, b)]
    return _split_piece(words, gaps, a, best, opts) + _split_piece(words, gaps, best + 1, b, opts)


def average_linkage(emb: np.ndarray, threshold: float, n_clusters: int | None = None) -> np.ndarray:
    """Agglomerative clustering of L2-normalised rows, average linkage on cosine distance.

    Merges the closest pair of clusters until the closest is ``threshold`` apart (or until
    ``n_clusters`` remain). Lance-Williams updates on an n x n matrix: quick for the few hundred
    pieces of an hour, and no scikit-learn/scipy import in the data path.

    Returns:
        A cluster index per row, numbered by first appearance.
    """
    n = len(emb)
    if n < 2:
        return np.zeros(n, dtype=int)
    d = 1.0 - np.clip(emb @ emb.T, -1.0, 1.0)
    np.fill_diagonal(d, np.inf)
    size = np.ones(n)
    alive = np.ones(n, dtype=bool)
    owner = np.arange(n)
    while alive.sum() > (n_clusters or 1):
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if n_clusters is None and d[i, j] > threshold:
            break
        i, j = min(i, j), max(i, j)
        d[i] = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        d[:, i] = d[i]
        d[i, i] = np.inf
        d[j], d[:, j] = np.inf, np.inf
        size[i] += size[j]
        alive[j] = False
        owner[owner == j] = i
    _, labels = np.unique(owner, return_inverse=True)
    first = {lab: k for k, lab in reversed(list(enumerate(labels)))}
    order = sorted(first, key=first.get)
    return np.array([order.index(lab) for lab in labels], dtype=int)


def _cluster(emb: np.ndarray, opts: SpeakerOptions) -> np.ndarray:
    if opts.num_speakers is not None:
        return average_linkage(emb, opts.threshold, min(opts.num_speakers, len(emb)))
    return average_linkage(emb, opts.threshold)


def label_words(
    words: Sequence,
    gaps: Sequence[Gap | None],
    audio16k: np.ndarray,
    encoder: SpeakerEncoder,
    opts: SpeakerOptions = SpeakerOptions(),
    reference: np.ndarray | None = None,
) -> SpeakerLabels:
    """Label every word with a speaker index, consistent across the recording.

    Args:
        words: recognised words (time order), already snapped to the audio.
        gaps: the gap after each word but the last (None where there is no pause).
        audio16k: the recording at 16 kHz.
        reference: optional embedding of the target voice; its nearest cluster becomes 0.

    Returns:
        Labels renumbered so that 0 is the target (reference) or the speaker with most speech.
    """
    if not words:
        return SpeakerLabels([])
    pieces = _pieces(words, gaps, opts)
    spans = _piece_spans(words, gaps, pieces)
    # 0.8 partial windows (1.6 s each) per second instead of Resemblyzer's 1.3: half the LSTM work,
    # still every part of a piece covered
    emb = encoder.embed_many([audio16k[int(s * ENCODER_SR) : int(e * ENCODER_SR)] for s, e in spans], rate=0.8)
    labels, centroids = _label_pieces(emb, np.array([e - s for s, e in spans]), opts)
    word_labels = np.zeros(len(words), dtype=int)
    for (a, b), lab in zip(pieces, labels):
        word_labels[a : b + 1] = lab
    turns = _similar_voices(words, gaps, audio16k, encoder, opts) if len(centroids) <= 2 else None
    uncertain = [False] * len(words)
    if turns is not None:
        word_labels, centroids, uncertain = turns.per_word, turns.centroids, [bool(u) for u in turns.uncertain]
    elif len(centroids) > 1:
        _changes_inside_pieces(words, pieces, spans, audio16k, encoder, centroids, word_labels)
    seconds = {
        int(k): float(sum(w.end - w.start for w, lab in zip(words, word_labels) if lab == k))
        for k in np.unique(word_labels)
    }
    ref_sim: dict[int, float] = {}
    if reference is not None:
        ref_sim = {k: float(centroids[k] @ reference) for k in seconds}
        order = sorted(seconds, key=lambda k: -ref_sim[k])
    else:
        order = sorted(seconds, key=lambda k: -seconds[k])
    remap = {old: new for new, old in enumerate(order)}
    per_word = [remap[int(lab)] for lab in word_labels]
    logger.info("speakers: %d piece(s), %d cluster(s)", len(pieces), len(order))
    return SpeakerLabels(
        per_word,
        {remap[k]: round(v, 2) for k, v in seconds.items()},
        len(pieces),
        {remap[k]: round(v, 3) for k, v in ref_sim.items()},
        uncertain,
    )


def _similar_voices(
    words: Sequence, gaps: Sequence[Gap | None], audio16k: np.ndarray, encoder: SpeakerEncoder, opts: SpeakerOptions
):
    """Turns of two similar voices (:mod:`utils.data.turns`) when the clustering found one or two
    voices, none was asked for, or two were; None otherwise or when the recording shows no such turns."""
    if not opts.similar_voices or opts.num_speakers not in (None, 2):
        return None
    from utils.data.turns import find_turns

    return find_turns(words, audio16k, encoder, gaps=gaps, two_voices=opts.num_speakers == 2)


def _piece_spans(
    words: Sequence, gaps: Sequence[Gap | None], pieces: list[tuple[int, int]]
) -> list[tuple[float, float]]:
    """The audio of each piece: between the pauses around it (word times can be late or early)."""
    spans = []
    for a, b in pieces:
        s = gaps[a - 1].end if a > 0 and gaps[a - 1] is not None else words[a].start
        e = gaps[b].start if b < len(gaps) and gaps[b] is not None else words[b].end
        spans.append((s, max(e, s + 0.01)))
    return spans


def _label_pieces(emb: np.ndarray, durations: np.ndarray, opts: SpeakerOptions) -> tuple[np.ndarray, np.ndarray]:
    """A cluster index per piece and the clusters' unit centroids.

    Pieces of at least ``min_piece_s`` (else the longest) are clustered; shorter ones join the
    nearest centroid.
    """
    big = durations >= opts.min_piece_s
    if not big.any():
        big = durations == durations.max()
    labels = np.zeros(len(durations), dtype=int)
    labels[big] = _cluster(emb[big], opts)
    centroids = np.stack([emb[big][labels[big] == k].mean(axis=0) for k in range(labels[big].max() + 1)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    if (~big).any():
        labels[~big] = np.argmax(emb[~big] @ centroids.T, axis=1)
    return labels, centroids


CHANGE_WINDOW_S = 1.6  # GE2E's partial window
CHANGE_MARGIN = 0.05  # a window must be this much closer to another voice to count for it


def _changes_inside_pieces(
    words: Sequence,
    pieces: list[tuple[int, int]],
    spans: list[tuple[float, float]],
    audio16k: np.ndarray,
    encoder: SpeakerEncoder,
    centroids: np.ndarray,
    word_labels: np.ndarray,
) -> None:
    """Relabel words where another voice takes over inside a piece (a turn with no pause).

    Pieces of at least two windows are scanned with 1.6 s windows every 0.4 s; a word takes the
    voice most of the confident windows over it choose, and a new voice must hold for a full
    window, so a single odd window does not split a turn. Changes ``word_labels`` in place.
    """
    long = [k for k, (s, e) in enumerate(spans) if e - s >= 2 * CHANGE_WINDOW_S]
    if not long:
        return
    wavs = [audio16k[int(spans[k][0] * ENCODER_SR) : int(spans[k][1] * ENCODER_SR)] for k in long]
    partial, owner, starts = encoder.partial_embeddings(wavs, rate=2.5)
    sims = partial @ centroids.T
    top = np.sort(sims, axis=1)
    choice, confident = np.argmax(sims, axis=1), (top[:, -1] - top[:, -2]) >= CHANGE_MARGIN
    for j, k in enumerate(long):
        a, b = pieces[k]
        here = (owner == j) & confident
        t0 = spans[k][0] + starts[here]
        votes = choice[here]
        labs = word_labels[a : b + 1].copy()
        for i, w in enumerate(words[a : b + 1]):
            mid = (w.start + w.end) / 2
            cover = votes[(t0 <= mid) & (mid < t0 + CHANGE_WINDOW_S)]
            if cover.size:
                labs[i] = np.bincount(cover).argmax()
        _drop_short_runs(labs, words[a : b + 1])
        word_labels[a : b + 1] = labs


def _drop_short_runs(labs: np.ndarray, words: Sequence) -> None:
    """Give runs of one label shorter than a window the label of the run before (or after) them."""
    changed = True
    while changed:
        changed = False
        starts = [0] + [i for i in range(1, len(labs)) if labs[i] != labs[i - 1]]
        bounds = list(zip(starts, starts[1:] + [len(labs)]))
        if len(bounds) < 2:
            return
        for r, (i, j) in enumerate(bounds):
            if words[j - 1].end - words[i].start < CHANGE_WINDOW_S:
                labs[i:j] = labs[bounds[r - 1][0]] if r > 0 else labs[bounds[1][0]]
                changed = True
                break
