"""Synthesize speech with a fine-tuned XTTS v2: exported folder, run folder or checkpoint.

Loading goes through Coqui's own ``Xtts`` API; the toolkit adds only its tokenizer
(:func:`utils.language.use_toolkit_tokenizer`, needed for languages XTTS lacks) and its own
sentence splitting (:func:`utils.language.tokenizer.split_sentences`): Coqui's
``enable_text_splitting`` needs spaCy and splits unknown languages with the English sentencizer,
which does not know Ethiopic sentence ends.

Every chunk goes through the generation guard (:mod:`utils.after.guard`): a token cap from
the text's length and the speaker's rate, checks for what follows the last word, trimming and an
optional retry. :func:`synthesize_with_report` returns the decisions; :func:`write_sidecar` writes
them next to the wav (``NAME.json``).

Speaking during training (test sentences, quality rows) is :mod:`utils.after.hooks`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.after.asr import load_asr
from utils.after.export import base_config_path, compact_state_dict, inference_config, load_state_dict, run_vocab
from utils.after.guard import (
    DEFAULT_LETTERS_PER_S,
    ChunkReport,
    GuardOptions,
    analyse_output,
    codes_per_second,
    recording_codes,
    text_letters,
    token_cap,
    token_limit,
    trim,
)
from utils.after.reference import choose_references_for_run, run_rows, speaker_rate
from utils.data.audio import load_audio, write_wav
from utils.errors import ConfigError, DataError, LanguageError
from utils.language import load_tokenizer, use_toolkit_tokenizer
from utils.runs import read_run_config, resolve_checkpoint, run_language
from utils.safe_load import check_model_files

logger = logging.getLogger(__name__)

OUTPUT_SR = 24000


@dataclass
class SynthesisOptions:
    """XTTS sampling settings; None takes the model config's value (the base model's defaults).

    Attributes:
        max_new_tokens: upper bound on generated audio tokens per chunk (~21.5 per second of
            audio), on top of the guard's text-based cap. None: the text-based cap alone (the
            model's limit when the guard is off).
        seed: seeds torch's RNG before each text (reproducible sampling).
        split_sentences: split long text into chunks of at most the language's character limit.
        gap_s: silence inserted between chunks.
        guard: the generation guard's settings (:class:`utils.after.guard.GuardOptions`).
    """

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    speed: float = 1.0
    max_new_tokens: int | None = None
    seed: int | None = None
    split_sentences: bool = True
    gap_s: float = 0.15
    guard: GuardOptions = field(default_factory=GuardOptions)

    # (name, lowest, highest, lowest included): the ranges XTTS's sampler accepts and makes sense of
    _RANGES = (
        ("temperature", 0.0, 5.0, False),  # 0 divides the logits by zero
        ("top_k", 1, 10_000, True),
        ("top_p", 0.0, 1.0, False),
        ("repetition_penalty", 0.0, 100.0, False),
        ("length_penalty", -100.0, 100.0, True),
        ("speed", 0.25, 4.0, True),  # XTTS stretches the latents; outside this it is noise or silence
        ("max_new_tokens", 1, 100_000, True),
        ("gap_s", 0.0, 10.0, True),
    )

    def __post_init__(self) -> None:
        for name, low, high, low_ok in self._RANGES:
            value = getattr(self, name)
            if value is None:
                continue
            if not (low <= value if low_ok else low < value) or value > high:
                bound = f"{'>=' if low_ok else '>'} {low:g} and <= {high:g}"
                raise ConfigError(f"--{name.replace('_', '-')} {value:g}: must be {bound}")

    def inference_kwargs(self, config: Any) -> dict[str, Any]:
        """Keyword arguments for ``Xtts.inference`` (unset values from ``config``)."""
        kwargs: dict[str, Any] = {}
        for name in ("temperature", "top_k", "top_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            kwargs[name] = value if value is not None else getattr(config, name)
        kwargs["speed"] = float(self.speed)
        if self.max_new_tokens is not None:
            kwargs["max_new_tokens"] = int(self.max_new_tokens)
        return kwargs


@dataclass
class LoadedModel:
    """An ``Xtts`` ready for inference plus what the toolkit knows about it."""

    model: Any
    source: Path
    language: str
    references: list[Path] = field(default_factory=list)
    run_dir: Path | None = None  # a run's model: references are chosen from its training rows when needed
    letters_per_s: float | None = None  # the speaker's rate for the guard's cap (None: looked up once)
    rate_source: str = ""
    _asr: dict[str, tuple[Any, str]] = field(default_factory=dict, repr=False)
    _latents: dict[tuple[str, ...], tuple[Any, Any]] = field(default_factory=dict, repr=False)

    @property
    def languages(self) -> tuple[str, ...]:
        tok = self.model.tokenizer
        return tuple(getattr(tok, "languages", ())) or tuple(self.model.config.languages)

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.model.args, "output_sample_rate", OUTPUT_SR))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def is_export_dir(path: str | os.PathLike) -> bool:
    """True for a folder written by :func:`utils.after.export.export_model` (or any XTTS model folder)."""
    path = Path(path)
    return (
        path.is_dir()
        and all((path / n).is_file() for n in ("model.pth", "config.json", "vocab.json"))
        and not any(path.glob("checkpoint_*.pth"))
    )


def load_model(source: str | os.PathLike, *, device: str | None = None, which: str = "best") -> LoadedModel:
    """Load an export folder, a run folder or one checkpoint of a run for inference.

    Args:
        source: export folder (``model.pth`` + ``config.json`` + ``vocab.json``), run folder
            (its best or last checkpoint, see ``which``) or a Trainer checkpoint ``.pth``.
        device: "cuda", "cpu" or None (CUDA when available).

    Raises:
        DataError: the source is not a model.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = Path(source)
    if is_export_dir(source):
        loaded = _load_export(source)
    else:
        loaded = _load_checkpoint(source, which)
    loaded.model.to(device)
    return loaded


def _load_export(model_dir: Path) -> LoadedModel:
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(model_dir / "config.json"))
    model = Xtts(config)
    check_model_files(sorted(model_dir.glob("*.pth")))  # Coqui's own refusal would be a raw traceback
    model.load_checkpoint(config, checkpoint_dir=str(model_dir), eval=True)
    use_toolkit_tokenizer(model, model_dir / "vocab.json")  # Coqui's tokenizer raises for new languages
    info_path = model_dir / "export_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    refs = [model_dir / r for r in info.get("references", [])]
    if not refs and (model_dir / "reference").is_dir():
        refs = sorted((model_dir / "reference").glob("*.wav"))
    return LoadedModel(model=model, source=model_dir, language=info.get("language", "en"), references=refs)


def _load_checkpoint(source: Path, which: str) -> LoadedModel:
    from TTS.tts.models.xtts import Xtts

    run_dir, ckpt = resolve_checkpoint(source, which=which)
    run_config = read_run_config(run_dir)
    vocab = run_vocab(run_dir, run_config)
    config = inference_config(run_config, base_config_path(run_config, run_dir))
    model = Xtts(config)
    model.tokenizer = load_tokenizer(vocab)
    model.init_models()  # sizes the text embedding from the (possibly extended) vocabulary
    model.load_state_dict(compact_state_dict(load_state_dict(ckpt)), strict=True)
    model.eval()  # Xtts.eval builds gpt_inference (what load_checkpoint(eval=True) does)
    model.hifigan_decoder.eval()
    use_toolkit_tokenizer(model, vocab)
    logger.info("loaded %s (run %s)", ckpt.name, run_dir)
    return LoadedModel(model=model, source=ckpt, language=run_language(run_config), run_dir=run_dir)


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


def check_model_language(loaded: LoadedModel, language: str) -> str:
    """``language`` if the model encodes it, else a LanguageError listing what it knows."""
    code = "zh-cn" if language == "zh" else language
    if code not in loaded.languages:
        raise LanguageError(
            f"this model does not know language '{language}'; it knows: {', '.join(loaded.languages)}. "
            "For a language XTTS lacks, use the model exported from the run trained on it"
        )
    return code


def conditioning(loaded: LoadedModel, speaker_wav: list[str | os.PathLike] | None = None) -> tuple[Any, Any]:
    """GPT conditioning latents and speaker embedding for the reference clip(s) (cached)."""
    if not speaker_wav and not loaded.references and loaded.run_dir is not None:
        loaded.references = [c.path for c in choose_references_for_run(loaded.run_dir, count=3).chosen]
    refs = [Path(p) for p in (speaker_wav or loaded.references)]
    if not refs:
        raise ConfigError("no speaker reference: pass --speaker-wav (export folders and run folders supply their own)")
    for ref in refs:
        if not ref.is_file():
            raise DataError(f"speaker reference {ref} not found")
    key = tuple(str(r.resolve()) for r in refs)
    if key not in loaded._latents:
        loaded._latents[key] = _conditioning_latents(loaded.model, refs)
    return loaded._latents[key]


def _conditioning_latents(model: Any, refs: list[Path], load_sr: int = 22050) -> tuple[Any, Any]:
    """``Xtts.get_conditioning_latents`` with the clips decoded by soundfile.

    Coqui's version decodes through ``torchaudio.load``, which with torchaudio >= 2.9 needs
    torchcodec and the system FFmpeg libraries; wav/flac/ogg need neither here. The rest is the same
    public calls in the same order: each clip (up to ``max_ref_len`` s, optionally peak-normalised)
    gives a speaker embedding (averaged), and the clips joined give the GPT conditioning latents.
    """
    import torch

    cfg = model.config
    embeddings, audios = [], []
    for ref in refs:
        audio, _sr = load_audio(ref, target_sr=load_sr)
        wav = torch.from_numpy(audio).float()[None, : load_sr * int(cfg.max_ref_len)].to(model.device)
        if cfg.sound_norm_refs:
            wav = (wav / torch.abs(wav).max()) * 0.75
        embeddings.append(model.get_speaker_embedding(wav, load_sr))
        audios.append(wav)
    latents = model.get_gpt_cond_latents(
        torch.cat(audios, dim=-1), load_sr, length=cfg.gpt_cond_len, chunk_length=cfg.gpt_cond_chunk_len
    )
    return latents, torch.stack(embeddings).mean(dim=0)


def split_text(loaded: LoadedModel, text: str, language: str) -> list[str]:
    """``text`` in chunks of at most the language's character limit (sentence ends first)."""
    from utils.language.tokenizer import split_sentences  # imports Coqui's tokenizer (and torch): on first use

    limit = int(loaded.model.tokenizer.char_limits.get(language.split("-")[0], 250))
    return split_sentences(text, limit)


def _one_chunk(loaded: LoadedModel, text: str, language: str) -> str:
    """The whole text as one chunk (``--no-split``), refused past the language's character limit."""
    text = " ".join(text.split())
    limit = int(loaded.model.tokenizer.char_limits.get(language.split("-")[0], 250))
    if len(text) > limit:
        raise ConfigError(
            f"--no-split: the text has {len(text)} characters, more than XTTS's limit of {limit} for "
            f"'{language}' in one piece; drop --no-split to speak it sentence by sentence"
        )
    return text


@dataclass
class SynthesisResult:
    """One spoken text: the audio and every decision the generation guard took."""

    wav: np.ndarray
    sample_rate: int
    text: str
    language: str
    seed: int | None
    letters_per_s: float
    rate_source: str
    guard: GuardOptions
    chunks: list[ChunkReport] = field(default_factory=list)
    asr: str = ""

    @property
    def duration_s(self) -> float:
        return self.wav.size / self.sample_rate

    @property
    def flags(self) -> list[str]:
        """Checks that failed in any chunk (of the attempt kept)."""
        return sorted({f for c in self.chunks for f in c.flags})

    def sidecar(self) -> dict[str, Any]:
        """The JSON sidecar: text, settings, the rate and its source, and each chunk's decisions."""
        return {
            "text": self.text,
            "language": self.language,
            "sample_rate": self.sample_rate,
            "duration_s": round(self.duration_s, 3),
            "seed": self.seed,
            "letters_per_s": round(self.letters_per_s, 3),
            "rate_source": self.rate_source,
            "guard": asdict(self.guard),
            "asr": self.asr,
            "flags": self.flags,
            "trimmed_s": round(sum(c.trimmed_s for c in self.chunks), 3),
            "chunks": [c.to_dict() for c in self.chunks],
        }


def speaking_rate(loaded: LoadedModel, options: SynthesisOptions) -> tuple[float, str]:
    """The speaker's letters per second for the guard's cap, and where it came from.

    In order: ``options.guard.letters_per_s``; the rate set on ``loaded`` (the training hook
    sets the training rows'); an export's reference clips (``export_info.json``); a run's
    training rows (median over clips); :data:`utils.after.guard.DEFAULT_LETTERS_PER_S`.
    """
    if options.guard.letters_per_s:
        return float(options.guard.letters_per_s), "option"
    if loaded.letters_per_s is None:
        loaded.letters_per_s, loaded.rate_source = _model_rate(loaded)
        if loaded.letters_per_s is None:
            loaded.letters_per_s, loaded.rate_source = DEFAULT_LETTERS_PER_S, "default (speaker's rate unknown)"
        logger.info("speaking rate for the length cap: %.1f letters/s (%s)", loaded.letters_per_s, loaded.rate_source)
    return float(loaded.letters_per_s), loaded.rate_source


def _model_rate(loaded: LoadedModel) -> tuple[float | None, str]:
    info_path = loaded.source / "export_info.json"
    if loaded.source.is_dir() and info_path.is_file():
        chosen = json.loads(info_path.read_text(encoding="utf-8")).get("reference_choice", {}).get("chosen", [])
        rates = [float(c["chars_per_s"]) for c in chosen if c.get("chars_per_s")]
        if rates:
            return statistics.median(rates), "the export's reference clips"
    if loaded.run_dir is not None:
        try:
            rows = run_rows(loaded.run_dir, "train")
        except DataError:
            return None, ""
        if rows:
            return 1.0 / speaker_rate([(r.path, r.text) for r in rows], loaded.language), "the run's training rows"
    return None, ""


def _guard_asr(loaded: LoadedModel, language: str, guard: GuardOptions) -> tuple[Any, str]:
    """The faster-whisper model the guard aligns words with (cached), or None and why not."""
    if not guard.enabled or not guard.use_asr:
        return None, "off"
    if language not in loaded._asr:
        loaded._asr[language] = load_asr(language)
        if loaded._asr[language][0] is None:
            logger.warning("generation guard without ASR: %s", loaded._asr[language][1])
    return loaded._asr[language]


def synthesize_with_report(
    loaded: LoadedModel,
    text: str,
    *,
    language: str | None = None,
    speaker_wav: list[str | os.PathLike] | None = None,
    options: SynthesisOptions | None = None,
) -> SynthesisResult:
    """Speak ``text`` through the generation guard; the audio (24 kHz float32) and the decisions.

    Raises:
        LanguageError: the model lacks ``language``.
        ConfigError: no reference clip, or empty text.
    """
    import torch

    options = options or SynthesisOptions()
    language = check_model_language(loaded, language or loaded.language)
    if not text.strip():
        raise ConfigError("empty text; give the text to speak")
    latents, speaker = conditioning(loaded, speaker_wav)
    chunks = split_text(loaded, text, language) if options.split_sentences else [_one_chunk(loaded, text, language)]
    rate, source = speaking_rate(loaded, options)
    asr, asr_note = _guard_asr(loaded, language, options.guard)
    gap = np.zeros(int(options.gap_s * loaded.sample_rate), dtype=np.float32)
    if options.seed is not None:
        torch.manual_seed(int(options.seed))
    result = SynthesisResult(
        np.zeros(0, np.float32),
        loaded.sample_rate,
        text,
        language,
        options.seed,
        rate,
        source,
        options.guard,
        asr=asr_note,
    )
    pieces: list[np.ndarray] = []
    for i, chunk in enumerate(chunks):
        wav, report = _speak_chunk(loaded, chunk, language, (latents, speaker), options, rate, source, i, asr)
        if i:
            pieces.append(gap)
        pieces.append(wav)
        result.chunks.append(report)
    result.wav = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return result


def _chunk_cap(
    loaded: LoadedModel, chunk: str, language: str, options: SynthesisOptions, rate: float
) -> tuple[int, float, str]:
    """``(max_new_tokens, cap_s, source)`` of one chunk: the guard's text-based cap, or the stock one when off."""
    model, guard = loaded.model, options.guard
    limit = getattr(model.gpt, "max_gen_mel_tokens", None)
    cps = codes_per_second(model.args)
    if guard.enabled:
        return token_cap(
            chunk,
            language,
            options=guard,
            letters_per_s=rate,
            codes_per_s=cps,
            model_limit=limit,
            explicit=options.max_new_tokens,
        )
    tokens = int(options.max_new_tokens or limit or 0)
    return tokens, tokens / cps, "max_new_tokens" if options.max_new_tokens else "model limit"


def _speak_chunk(
    loaded: LoadedModel,
    chunk: str,
    language: str,
    cond: tuple[Any, Any],
    options: SynthesisOptions,
    rate: float,
    source: str,
    index: int,
    asr: Any,
) -> tuple[np.ndarray, ChunkReport]:
    """One chunk: cap, generate (with retries), check, trim."""
    import torch

    model, guard, sr = loaded.model, options.guard, loaded.sample_rate
    kwargs = options.inference_kwargs(model.config)
    tokens, cap_s, cap_source = _chunk_cap(loaded, chunk, language, options, rate)
    if guard.enabled:
        kwargs["max_new_tokens"] = tokens
    report = ChunkReport(chunk, text_letters(chunk, language), rate, source, cap_s, tokens, cap_source)
    tries = []
    for k in range(guard.retries + 1 if guard.enabled else 1):
        seed = options.seed if k == 0 else int(torch.randint(0, 2**31 - 1, (1,)).item())
        if k:
            torch.manual_seed(seed)
        wav, codes = _generate(model, chunk, language, cond, kwargs)
        if not guard.enabled:
            report.duration_s = wav.size / sr
            return wav, report
        att = analyse_output(
            wav,
            sr,
            chunk,
            language,
            options=guard,
            codes=codes,
            max_new_tokens=tokens,
            stop_token=getattr(model.gpt, "stop_audio_token", None),
            transcriber=asr,
            seed=seed,
        )
        report.attempts.append(att)
        tries.append(wav)
        if not att.failures:
            break
        if k < guard.retries:
            logger.warning(
                "chunk %d %r: %s; trying again with another seed", index + 1, chunk[:40], ", ".join(att.failures)
            )
    return _keep_best(report, tries, guard, sr, index), report


def _keep_best(report: ChunkReport, tries: list[np.ndarray], guard: GuardOptions, sr: int, index: int) -> np.ndarray:
    """The attempt with the fewest failed checks (the first among equals), trimmed where its checks say."""
    report.chosen = min(range(len(tries)), key=lambda i: (len(report.attempts[i].failures), i))
    wav, att = tries[report.chosen], report.attempts[report.chosen]
    if guard.trim and att.cut_s is not None:
        trimmed = trim(wav, sr, att.cut_s)
        report.trimmed_s = (wav.size - trimmed.size) / sr
        logger.info("chunk %d: trimmed %.2f s after the %s", index + 1, report.trimmed_s, att.cut_reason)
        wav = trimmed
    report.duration_s = wav.size / sr
    return wav


def _generate(
    model: Any, chunk: str, language: str, cond: tuple[Any, Any], kwargs: dict[str, Any]
) -> tuple[np.ndarray, list[int] | None]:
    """``Xtts.inference`` on one chunk; the wav and the audio codes it generated.

    A ``max_new_tokens`` in ``kwargs`` becomes the GPT's own length limit for the call
    (:func:`utils.after.guard.token_limit`): passed on beside Coqui's ``max_length``, transformers
    warns about the pair on every chunk.
    """
    kwargs = dict(kwargs)
    cap = kwargs.pop("max_new_tokens", None)
    with recording_codes(model.gpt) as captured, token_limit(model.gpt, cap):
        out = model.inference(chunk, language, cond[0], cond[1], enable_text_splitting=False, **kwargs)
    codes = [int(c) for c in captured[-1].reshape(-1).tolist()] if captured else None
    return np.asarray(out["wav"], dtype=np.float32).reshape(-1), codes


def synthesize(
    loaded: LoadedModel,
    text: str,
    *,
    language: str | None = None,
    speaker_wav: list[str | os.PathLike] | None = None,
    options: SynthesisOptions | None = None,
) -> np.ndarray:
    """Speak ``text``; returns float32 audio at ``loaded.sample_rate`` (24 kHz).

    The audio of :func:`synthesize_with_report` (the guard's decisions are logged, not returned).

    Raises:
        LanguageError: the model lacks ``language``.
        ConfigError: no reference clip.
    """
    return synthesize_with_report(loaded, text, language=language, speaker_wav=speaker_wav, options=options).wav


def write_sidecar(wav_path: str | os.PathLike, result: SynthesisResult) -> Path:
    """Write ``result.sidecar()`` as ``<wav without .wav>.json`` next to the wav."""
    path = Path(wav_path).with_suffix(".json")
    data = {"wav": Path(wav_path).name, **result.sidecar()}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_texts(path: str | os.PathLike) -> list[str]:
    """Texts from a file: one per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} not found")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t and not t.startswith("#")]
    if not texts:
        raise DataError(f"{path} holds no text (one text per line; '#' starts a comment)")
    return texts


def synthesize_to_files(
    loaded: LoadedModel,
    texts: Iterable[str],
    out: str | os.PathLike,
    *,
    language: str | None = None,
    speaker_wav: list[str | os.PathLike] | None = None,
    options: SynthesisOptions | None = None,
) -> list[Path]:
    """Write one wav per text, each with its guard sidecar (``NAME.json``). With one text, ``out``
    is the wav path; with several, a folder (``001.wav``, ``002.wav``, ...)."""
    from tqdm import tqdm

    texts = list(texts)
    out = Path(out)
    single = len(texts) == 1 and out.suffix.lower() == ".wav"
    paths = [out] if single else [out / f"{i:03d}.wav" for i in range(1, len(texts) + 1)]
    for text, path in tqdm(
        list(zip(texts, paths, strict=True)), desc="synthesize", unit="text", disable=len(texts) < 2
    ):
        result = synthesize_with_report(loaded, text, language=language, speaker_wav=speaker_wav, options=options)
        write_wav(path, result.wav, loaded.sample_rate)
        write_sidecar(path, result)
        logger.info(
            "%s: %.2f s for %d characters%s",
            path,
            result.duration_s,
            len(text),
            f" (checks failed: {', '.join(result.flags)})" if result.flags else "",
        )
    return paths
