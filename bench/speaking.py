"""A small XTTS trained from random weights, all three stages, on espeak-ng speech: a model that speaks.

One GPU call (at most 10 minutes) runs :func:`train_speaking_model`: it makes about two hours of
speech in two voices (:mod:`bench.speaking_data`), builds a small XTTS from random weights in the
real on-disk layout (:func:`utils.base_model.make_tiny_base` with :data:`SMALL_GPT_ARGS`), trains
the DVAE, the GPT and the HiFi-GAN decoder through the toolkit's recipe (``FineTune`` with
``stages=("dvae", "gpt", "decoder")``, each stage under a wall-time limit), then speaks held-out
sentences it never heard, in each voice, with the export and with earlier GPT checkpoints. The
scoring (Whisper tiny.en CER, GE2E similarity, DNSMOS, the guard's flags) runs on another machine
from the returned wavs: ``scripts/score_speaking_model.py``.

The learning rates are for training from random weights (the hours table's are for fine-tuning a
trained XTTS): GPT 5e-4 with 300 warm-up steps (GPT-2 small's from-scratch range), DVAE 3e-4 with
its codebook placed on data and unused codes restarted, decoder 2e-4 (HiFi-GAN's published rate).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from utils.base_model import TINY_GPT_ARGS

logger = logging.getLogger(__name__)

# 6 layers x 512 channels, 8 heads: about 25 M GPT parameters (XTTS v2: 30 x 1,024, 428 M).
SMALL_GPT_ARGS: dict[str, Any] = {
    **TINY_GPT_ARGS,  # the same token layout; only the size differs
    "gpt_layers": 6,
    "gpt_n_model_channels": 512,
    "gpt_n_heads": 8,
    "decoder_input_dim": 512,  # must equal gpt_n_model_channels
}


@dataclass(frozen=True)
class SpeakingPlan:
    """What the call trains: data, time per stage (minutes) and the from-scratch learning rates."""

    hours: float = 2.0
    voices: tuple[str, ...] = ("en-us", "en-us+f2")
    heldout: int = 20
    dvae_minutes: float = 1.0
    gpt_minutes: float = 3.6
    decoder_minutes: float = 1.8
    gpt_lr: float = 5e-4
    gpt_warmup_steps: int = 300
    gpt_batch_size: int = 64
    dvae_lr: float = 3e-4
    decoder_lr: float = 2e-4
    eval_every_steps: int = 400
    checkpoints_to_speak: int = 3  # earlier GPT checkpoints spoken with the final decoder (CER over steps)
    seed: int = 0
    tiny: bool = False  # the tiny GPT of the test suite (a CPU-sized run of the same flow)


def run_values(plan: SpeakingPlan, data_dir: Path, base_dir: Path, runs_dir: Path) -> dict[str, Any]:
    """The RunConfig values of the three-stage run (epochs high: the wall-time limits end each stage)."""
    return {
        "dataset": str(data_dir),
        "base_model": str(base_dir),
        "language": "en",
        "output_path": str(runs_dir),
        "dataset_hours": plan.hours,
        "stages": ("dvae", "gpt", "decoder"),
        "epochs": 10_000,
        "max_minutes": plan.gpt_minutes,
        "lr": plan.gpt_lr,
        "warmup_steps": plan.gpt_warmup_steps,
        "batch_size": plan.gpt_batch_size,
        "grad_accum": 1,
        "weight_decay": 0.01,
        "eval_every_steps": plan.eval_every_steps,
        "save_every_minutes": max(0.5, plan.gpt_minutes / (plan.checkpoints_to_speak + 1)),
        "keep_checkpoints": plan.checkpoints_to_speak + 1,
        "dvae_lr": plan.dvae_lr,
        "dvae_epochs": 10_000,
        "dvae_max_minutes": plan.dvae_minutes,
        # a random DVAE's codebook collapses onto a few codes: place it on data, restart unused codes
        "dvae_settings": {"codebook_from_data": True, "restart_unused_codes": True},
        "decoder_lr": plan.decoder_lr,
        "decoder_disc_lr": plan.decoder_lr,
        "decoder_epochs": 10_000,
        "decoder_max_minutes": plan.decoder_minutes,
        "seed": plan.seed,
        "test_sentences": 0,  # the held-out sentences are spoken once, after training
        "quality_eval": False,  # Whisper and GE2E score the speech on the CPU machine
    }


def train_speaking_model(out_dir: str | Path, plan: SpeakingPlan, *, espeak_dir: str | Path | None = None) -> dict:
    """Data, base, three stages, held-out speech; returns the summary also written to OUT/summary.json."""
    from bench.speaking_data import build_speaking_dataset
    from utils.base_model import make_tiny_base
    from utils.finetune import FineTune, RunConfig

    out = Path(out_dir)
    times: dict[str, float] = {}
    t0 = time.time()
    info = build_speaking_dataset(
        out / "data",
        hours=plan.hours,
        voices=plan.voices,
        heldout=plan.heldout,
        n_eval=8 if plan.tiny else 40,
        seed=plan.seed,
        espeak_dir=espeak_dir,
    )
    times["data_s"] = round(time.time() - t0, 1)
    texts = [line.split("|")[1] for line in (out / "data" / "metadata_train.csv").read_text().splitlines()[1:]]
    gpt_args = None if plan.tiny else SMALL_GPT_ARGS
    base = make_tiny_base(out / "base", extra_text=texts + info["heldout"], gpt_args=gpt_args, seed=plan.seed)
    config = RunConfig.build(**run_values(plan, out / "data", base, out / "runs"), progress=False)
    t1 = time.time()
    result = FineTune(config).run()
    times["train_s"] = round(time.time() - t1, 1)
    t2 = time.time()
    spoken = speak_heldout(result.run_dir, result.export_dir, info, out / "wavs", plan)
    spoken["espeak"] = speak_reference(info, out / "wavs" / "espeak", espeak_dir)
    times["speak_s"] = round(time.time() - t2, 1)
    summary = {"plan": asdict(plan), "data": info, "times": times, "run_dir": str(result.run_dir), "spoken": spoken}
    summary["stages"] = stage_summaries(result.run_dir)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def stage_summaries(run_dir: Path) -> dict[str, Any]:
    """Each stage's state and last evaluation, as the run folder records them."""
    from utils.runs import read_jsonl

    out: dict[str, Any] = {}
    for stage, folder in (("dvae", run_dir / "dvae"), ("gpt", run_dir), ("decoder", run_dir / "decoder")):
        rows = read_jsonl(folder / "metrics.jsonl")
        out[stage] = {"evaluations": len(rows), "first": rows[0] if rows else None, "last": rows[-1] if rows else None}
    stages = run_dir / "stages.json"
    if stages.is_file():
        out["stages_json"] = json.loads(stages.read_text(encoding="utf-8"))
    return out


def speak_heldout(run_dir: Path, export_dir: Path, info: dict, wav_dir: Path, plan: SpeakingPlan) -> dict[str, Any]:
    """Speak the held-out sentences: with the export in every voice, and with earlier GPT checkpoints
    (the export's decoder) in the first voice. Returns what was written, with the guard's reports."""
    from utils.after.synthesize import SynthesisOptions, load_model
    from utils.runs import list_checkpoints

    options = SynthesisOptions(seed=plan.seed)
    info = {**info, "references": auto_references(run_dir, info["speakers"], wav_dir / "references")}
    final = load_model(export_dir)
    spoken: dict[str, Any] = {"export": _speak_set(final, info, info["speakers"], wav_dir / "export", options)}
    ckpts = [c for c in list_checkpoints(run_dir) if c.name.startswith("checkpoint_")]
    step_of = {c: int(c.stem.split("_")[-1]) for c in ckpts}
    for ckpt in sorted(ckpts, key=step_of.get)[: plan.checkpoints_to_speak]:
        loaded = load_model(ckpt)
        loaded.model.hifigan_decoder.load_state_dict(final.model.hifigan_decoder.state_dict())
        tag = f"step_{step_of[ckpt]:06d}"
        spoken[tag] = _speak_set(loaded, info, info["speakers"][:1], wav_dir / tag, options)
    return spoken


def auto_references(run_dir: Path, speakers: list[str], folder: Path) -> dict[str, str]:
    """Each voice's reference as the toolkit chooses it from the run's training rows (what a user gets
    without --speaker-wav), copied into ``folder`` so the scorer can check it is that voice."""
    import shutil

    from utils.after.reference import choose_references_for_run

    folder.mkdir(parents=True, exist_ok=True)
    refs = {}
    for speaker in speakers:
        chosen = choose_references_for_run(run_dir, count=1, speaker=speaker, language="en").chosen[0].path
        refs[speaker] = str(shutil.copy(chosen, folder / f"{speaker}.wav"))
    return refs


def speak_reference(info: dict, folder: Path, espeak_dir: str | Path | None) -> dict[str, Any]:
    """The held-out sentences as espeak-ng says them: the ceiling of what the scorers make of this speech."""
    from bench.speaking_data import Espeak, speak_all

    rows, jobs = [], []
    for speaker in info["speakers"]:
        voice = info["voice_of"][speaker]
        (folder / speaker).mkdir(parents=True, exist_ok=True)
        for k, text in enumerate(info["heldout"]):
            wav = folder / speaker / f"{k:02d}.wav"
            jobs.append((text, voice, wav))
            rows.append({"speaker": speaker, "index": k, "text": text, "wav": str(wav), "flags": []})
    speak_all(jobs, Espeak(Path(espeak_dir) if espeak_dir else None))
    (folder / "spoken.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return {"folder": str(folder), "n": len(rows)}


def _speak_set(loaded: Any, info: dict, speakers: list[str], folder: Path, options: Any) -> dict[str, Any]:
    import soundfile as sf

    from utils.after.synthesize import synthesize_with_report

    rows = []
    for speaker in speakers:
        (folder / speaker).mkdir(parents=True, exist_ok=True)
        for k, text in enumerate(info["heldout"]):
            result = synthesize_with_report(
                loaded, text, language="en", speaker_wav=[info["references"][speaker]], options=options
            )
            wav = folder / speaker / f"{k:02d}.flac"  # lossless, half a wav's size on the way back
            sf.write(str(wav), result.wav, result.sample_rate, format="FLAC", subtype="PCM_16")
            rows.append({"speaker": speaker, "index": k, "wav": str(wav), "flags": result.flags, **result.sidecar()})
    (folder / "spoken.json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    return {"folder": str(folder), "n": len(rows)}
