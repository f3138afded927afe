"""Who speaks when: speaker turns and per-recording speaker clusters from GE2E embeddings.

The encoder is Resemblyzer's GE2E model (its weights ship inside the wheel, so it runs offline).
Words are grouped into pieces at pauses of at least ``turn_gap_s``; each piece long enough is
embedded, and the pieces are clustered (average-linkage agglomerative clustering on cosine
distance), so the labels are consistent across the recording. Short pieces take the label of the
nearest cluster. Speaker changes without any pause are not detected at this level; pyannote's
diarisation (downloadable, see the README) handles overlapping and pause-free turns better.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from utils.data.boundaries import Gap

logger = logging.getLogger(__name__)

ENCODER_SR = 16000


@dataclass(frozen=True)
class SpeakerOptions:
    """How turns are found and clustered.

    Attributes:
        turn_gap_s: pauses at least this long may separate two speakers' turns.
        min_piece_s: pieces shorter than this are not clustered (too little voice), only assigned.
        threshold: cosine distance at which clusters stop merging.
        num_speakers: force this many clusters (None: decided by ``threshold``).
    """

    turn_gap_s: float = 0.2
    min_piece_s: float = 0.8
    threshold: float = 0.33
    num_speakers: int | None = None


@dataclass
class SpeakerLabels:
    """A speaker index per word (0 = the most speech, or the reference voice) and the evidence."""

    per_word: list[int]
    seconds: dict[int, float] = field(default_factory=dict)
    pieces: int = 0
    reference_similarity: dict[int, float] = field(default_factory=dict)


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
    weights *= (2.0 / (mel_hz[2: n_mels + 2] - mel_hz[:n_mels]))[:, None]
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

    def _mel(self, wav: np.ndarray) -> np.ndarray:
        n_fft, hop = 400, 160
        if self._fb is None:
            self._fb = slaney_mel_filters(ENCODER_SR, n_fft, 40)
        x = np.pad(wav, n_fft // 2)
        n = 1 + (len(x) - n_fft) // hop
        idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
        window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        power = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2
        return (power.astype(np.float32) @ self._fb.T).astype(np.float32)

    def embed_many(self, wavs: Sequence[np.ndarray], rate: float = 1.3, min_coverage: float = 0.75) -> np.ndarray:
        """L2-normalised 256-d embeddings of 16 kHz mono pieces (each volume-normalised first)."""
        import torch

        enc = self._encoder()
        mels, owner = [], []
        for k, w in enumerate(wavs):
            w = np.asarray(w, dtype=np.float32)
            rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) if w.size else 0.0
            if rms > 1e-6:
                w = w * np.float32(10 ** (-30 / 20) / rms)  # Resemblyzer's -30 dBFS normalisation
            wav_slices, mel_slices = enc.compute_partial_slices(len(w), rate, min_coverage)
            if wav_slices[-1].stop > len(w):
                w = np.pad(w, (0, wav_slices[-1].stop - len(w)))
            mel = self._mel(w)
            for sl in mel_slices:
                mels.append(mel[sl])
                owner.append(k)
        threads = torch.get_num_threads()
        # one thread: the small LSTM gains little from more, and on a busy CPU it runs several times faster
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                partial = enc(torch.from_numpy(np.stack(mels)).to(enc.device)).cpu().numpy()
        finally:
            torch.set_num_threads(threads)
        owner_arr = np.asarray(owner)
        out = np.stack([partial[owner_arr == k].mean(axis=0) for k in range(len(wavs))])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed(self, audio16k: np.ndarray) -> np.ndarray:
        """Embedding of one piece of 16 kHz speech."""
        return self.embed_many([audio16k])[0]


def _pieces(words: Sequence, gaps: Sequence[Gap | None], turn_gap_s: float) -> list[tuple[int, int]]:
    out, first = [], 0
    for i, g in enumerate(gaps):
        if g is not None and g.width >= turn_gap_s:
            out.append((first, i))
            first = i + 1
    out.append((first, len(words) - 1))
    return out


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
    pieces = _pieces(words, gaps, opts.turn_gap_s)
    spans = []
    for a, b in pieces:  # the audio between the pauses around the piece (word times can be late or early)
        s = gaps[a - 1].end if a > 0 and gaps[a - 1] is not None else words[a].start
        e = gaps[b].start if b < len(gaps) and gaps[b] is not None else words[b].end
        spans.append((s, max(e, s + 0.01)))
    # 0.8 partial windows (1.6 s each) per second instead of Resemblyzer's 1.3: half the LSTM work,
    # still every part of a piece covered
    emb = encoder.embed_many([audio16k[int(s * ENCODER_SR): int(e * ENCODER_SR)] for s, e in spans], rate=0.8)
    durations = np.array([e - s for s, e in spans])
    big = durations >= opts.min_piece_s
    if not big.any():
        big = durations == durations.max()
    labels = np.zeros(len(pieces), dtype=int)
    labels[big] = _cluster(emb[big], opts)
    centroids = np.stack([emb[big][labels[big] == k].mean(axis=0) for k in range(labels[big].max() + 1)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    if (~big).any():
        labels[~big] = np.argmax(emb[~big] @ centroids.T, axis=1)
    seconds = {int(k): float(durations[labels == k].sum()) for k in np.unique(labels)}
    ref_sim: dict[int, float] = {}
    if reference is not None:
        ref_sim = {k: float(centroids[k] @ reference) for k in seconds}
        order = sorted(seconds, key=lambda k: -ref_sim[k])
    else:
        order = sorted(seconds, key=lambda k: -seconds[k])
    remap = {old: new for new, old in enumerate(order)}
    per_word = [0] * len(words)
    for (a, b), lab in zip(pieces, labels):
        for i in range(a, b + 1):
            per_word[i] = remap[int(lab)]
    logger.info("speakers: %d piece(s), %d cluster(s)", len(pieces), len(order))
    return SpeakerLabels(per_word, {remap[k]: round(v, 2) for k, v in seconds.items()}, len(pieces),
                         {remap[k]: round(v, 3) for k, v in ref_sim.items()})
