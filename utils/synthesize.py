"""Synthesize speech with a fine-tuned XTTS v2: exported folder, run folder or checkpoint.

Loading goes through Coqui's own ``Xtts`` API; the toolkit adds only its tokenizer
(:func:`utils.language.use_toolkit_tokenizer`, needed for languages XTTS lacks) and its own
sentence splitting (:func:`utils.language.tokenizer.split_sentences`): Coqui's
``enable_text_splitting`` needs spaCy and splits unknown languages with the English sentencizer,
which does not know Ethiopic sentence ends.

``TestSentencesHook`` synthesizes a few held-out sentences during training (a ToolkitTrainer
``on_evaluation`` hook): wavs in ``<run>/test_sentences/step_N/`` and in TensorBoard.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from utils.errors import ConfigError, DataError, LanguageError

logger = logging.getLogger(__name__)

OUTPUT_SR = 24000


@dataclass
class SynthesisOptions:
    """XTTS sampling settings; None takes the model config's value (the base model's defaults).

    Attributes:
        max_new_tokens: cap on generated audio tokens (~21.5 per second of audio). None: the
            model's limit. An untrained or broken model runs to the cap, so tests and demos set it.
        seed: seeds torch's RNG before each text (reproducible sampling).
        split_sentences: split long text into chunks of at most the language's character limit.
        gap_s: silence inserted between chunks.
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
    """True for a folder written by :func:`utils.export.export_model` (or any XTTS model folder)."""
    path = Path(path)
    return path.is_dir() and all((path / n).is_file() for n in ("model.pth", "config.json", "vocab.json")) and not any(
        path.glob("checkpoint_*.pth")
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
    import json

    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    from utils.language import use_toolkit_tokenizer

    config = XttsConfig()
    config.load_json(str(model_dir / "config.json"))
    model = Xtts(config)
    from utils.safe_load import check_model_files

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

    from utils.export import (
        _base_config_path,
        _run_vocab,
        compact_state_dict,
        inference_config,
        load_state_dict,
    )
    from utils.runs import read_run_config, resolve_checkpoint, run_language
    from utils.language import load_tokenizer, use_toolkit_tokenizer

    run_dir, ckpt = resolve_checkpoint(source, which=which)
    run_config = read_run_config(run_dir)
    vocab = _run_vocab(run_dir, run_config)
    config = inference_config(run_config, _base_config_path(run_config))
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
        from utils.reference import choose_references_for_run

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

    from utils.data.audio import load_audio

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
    from utils.language.tokenizer import split_sentences

    limit = int(loaded.model.tokenizer.char_limits.get(language.split("-")[0], 250))
    return split_sentences(text, limit)


def synthesize(
    loaded: LoadedModel,
    text: str,
    *,
    language: str | None = None,
    speaker_wav: list[str | os.PathLike] | None = None,
    options: SynthesisOptions | None = None,
) -> np.ndarray:
    """Speak ``text``; returns float32 audio at ``loaded.sample_rate`` (24 kHz).

    Raises:
        LanguageError: the model lacks ``language``.
        ConfigError: no reference clip.
    """
    import torch

    options = options or SynthesisOptions()
    language = check_model_language(loaded, language or loaded.language)
    if not text.strip():
        raise ConfigError("empty text; give the text to speak")
    latents, speaker = conditioning(loaded, speaker_wav)
    chunks = split_text(loaded, text, language) if options.split_sentences else [" ".join(text.split())]
    kwargs = options.inference_kwargs(loaded.model.config)
    gap = np.zeros(int(options.gap_s * loaded.sample_rate), dtype=np.float32)
    if options.seed is not None:
        torch.manual_seed(int(options.seed))
    pieces: list[np.ndarray] = []
    for i, chunk in enumerate(chunks):
        out = loaded.model.inference(chunk, language, latents, speaker, enable_text_splitting=False, **kwargs)
        if i:
            pieces.append(gap)
        pieces.append(np.asarray(out["wav"], dtype=np.float32).reshape(-1))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


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
    """Write one wav per text. With one text, ``out`` is the wav path; with several, a folder
    (``001.wav``, ``002.wav``, ...)."""
    from tqdm import tqdm

    from utils.data.audio import write_wav

    texts = list(texts)
    out = Path(out)
    single = len(texts) == 1 and out.suffix.lower() == ".wav"
    paths = [out] if single else [out / f"{i:03d}.wav" for i in range(1, len(texts) + 1)]
    for text, path in tqdm(list(zip(texts, paths, strict=True)), desc="synthesize", unit="text", disable=len(texts) < 2):
        wav = synthesize(loaded, text, language=language, speaker_wav=speaker_wav, options=options)
        write_wav(path, wav, loaded.sample_rate)
        logger.info("%s: %.2f s for %d characters", path, wav.size / loaded.sample_rate, len(text))
    return paths


# --------------------------------------------------------------------------------------------
# During training
# --------------------------------------------------------------------------------------------


def is_main_process(trainer: Any) -> bool:
    """True on the process that writes files (rank 0, or a single-process run)."""
    args = getattr(trainer, "args", None)
    return getattr(args, "rank", None) in (None, 0)


@contextmanager
def trainer_model(trainer: Any, language: str, references: list[Path]) -> Iterator[LoadedModel]:
    """The training model as a :class:`LoadedModel`, for inference in the middle of training.

    Builds the GPT's inference wrapper and puts every module in eval mode; afterwards removes the
    wrapper (as ``GPTTrainer.test_run`` does), restores each module's mode and torch's RNG state,
    so training goes on exactly as without the detour.
    """
    import torch

    model = trainer._get_model() if hasattr(trainer, "_get_model") else trainer.model
    xtts = model.xtts
    modes = {m: m.training for m in xtts.modules()}
    gpt = xtts.gpt
    built = not hasattr(gpt, "gpt_inference")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # The speed levers keep the frozen HiFiGAN decoder on the CPU during training
    # (utils.training.speed.offload_frozen_modules): borrow it onto the GPT's device.
    gpt_device = next(gpt.parameters()).device
    decoder_home = next(xtts.hifigan_decoder.parameters()).device
    try:
        if decoder_home != gpt_device:
            xtts.hifigan_decoder.to(gpt_device)
        if built:
            gpt.init_gpt_for_inference(kv_cache=xtts.args.kv_cache, use_deepspeed=False)
        torch.nn.Module.train(xtts, False)
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            yield LoadedModel(model=xtts, source=Path(trainer.output_path), language=language, references=list(references))
    finally:
        if built:
            del gpt.gpt_inference
            del gpt.gpt.wte
        for m, mode in modes.items():
            m.training = mode
        if decoder_home != gpt_device:
            xtts.hifigan_decoder.to(decoder_home)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class TestSentencesHook:
    """A ToolkitTrainer ``on_evaluation`` hook: speak held-out sentences with the current weights.

    Wavs go to ``<run>/test_sentences/step_<N>/<i>.wav`` and to TensorBoard (TestAudios/<i>).
    The GPT's training state and the torch RNG are restored afterwards, so training is unchanged.

    Args:
        sentences: texts to speak; default the first ``max_sentences`` eval rows of the run.
        language: default the language of the eval rows (or "en").
        references: reference clips; default chosen from the training rows (utils.reference).
        every: run at every ``every``-th evaluation.
        options: sampling settings (seeded: the same seed at every save).
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        sentences: list[str] | None = None,
        *,
        language: str | None = None,
        references: list[str | os.PathLike] | None = None,
        max_sentences: int = 3,
        every: int = 1,
        options: SynthesisOptions | None = None,
    ) -> None:
        self.sentences = list(sentences) if sentences else None
        self.language = language
        self.references = [Path(r) for r in references] if references else None
        self.max_sentences = max_sentences
        self.every = max(1, int(every))
        self.options = options or SynthesisOptions(seed=0)
        self.calls = 0
        self.written: list[Path] = []

    def _setup(self, trainer: Any) -> None:
        samples = list(getattr(trainer, "eval_samples", None) or [])
        if self.sentences is None:
            self.sentences = [s["text"] for s in samples[: self.max_sentences]]
        if self.language is None:
            self.language = samples[0].get("language", "en") if samples else "en"
        if self.references is None:
            from utils.reference import choose_references

            train = list(getattr(trainer, "train_samples", None) or [])
            choice = choose_references([(s["audio_file"], s["text"]) for s in train], count=1, language=self.language)
            self.references = [c.path for c in choice.chosen]
            logger.info("test sentences: reference %s (%s)", self.references[0].name, choice.note)

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        if not is_main_process(trainer):
            return
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        if self.sentences is None or self.references is None or self.language is None:
            self._setup(trainer)
        if not self.sentences:
            return
        step = int(record.get("step", getattr(trainer, "total_steps_done", 0)))
        out_dir = Path(trainer.output_path) / "test_sentences" / f"step_{step}"
        with trainer_model(trainer, self.language, self.references) as loaded:
            audios = self._speak(loaded, out_dir)
        dashboard = getattr(trainer, "dashboard_logger", None)
        if dashboard is not None and audios:
            dashboard.test_audios(step, audios, OUTPUT_SR)

    def _speak(self, loaded: LoadedModel, out_dir: Path) -> dict[str, np.ndarray]:
        from utils.data.audio import write_wav

        audios = {}
        for i, text in enumerate(self.sentences or [], start=1):
            wav = synthesize(loaded, text, language=self.language, options=self.options)
            self.written.append(write_wav(out_dir / f"{i:02d}.wav", wav, loaded.sample_rate))
            audios[f"{i:02d}"] = wav
        (out_dir / "sentences.txt").write_text("\n".join(self.sentences or []) + "\n", encoding="utf-8")
        logger.info("test sentences: %d wavs in %s", len(audios), out_dir)
        return audios


def test_sentences_hook(**kwargs: Any) -> TestSentencesHook:
    """A :class:`TestSentencesHook` (same arguments); pass it in ToolkitTrainer's ``on_evaluation``."""
    return TestSentencesHook(**kwargs)


test_sentences_hook.__test__ = False  # type: ignore[attr-defined]
