"""The audio-relevance experiment: does the audio-visual model use the sound where it matters?

On a data set in the STAViS layout whose videos carry a condition (``conditions.json``: the
synthetic benchmark's ``relevant``, ``music`` and ``silent``), for each seed:

- ``av``: the audio-visual model trained on the train split with its soundtrack;
- ``v``: its visual-only twin -- the same architecture, recipe, seed and step budget, with the
  audio input replaced by digital silence in training AND test;
- ``center``: the centre-bias baseline, a centred Gaussian whose width is fitted (best CC) on
  the TRAIN split's maps; it does not depend on the seed.

Both networks are scored with the final weights of their fixed budget (no checkpoint selection:
the experiment's recipe has no validation split, so the test split is never looked at during
training) on every frame of every test video (causal windows, stride 1), with CC and NSS per
video averaged over the videos of each condition (:mod:`avsal_deploy.training.evaluate`).

When the data set was written by :func:`avsal_deploy.data.synthetic.generate` (its
``objects.json`` annotations exist), two seed-independent references from the generator's own
attention model are scored too (:func:`avsal_deploy.data.synthetic.expected_density`):
``visual_ceiling``, the expected map with every object equally likely -- the best a predictor that
ignores the sound can do in expectation -- and ``oracle``, the expected map that knows the source.

A control scores the ``av`` model with a MISMATCHED soundtrack (another test video's of the same
condition, :func:`mismatched_inputs`): it tells whether the model uses what the sound says (which
object it belongs to) or only that there is sound.

``results.json`` holds, per condition and model, the mean, the sample standard deviation
(ddof = 1; 0 for a single seed) and the per-seed values of CC and NSS, the recipe, timings and
the verdict on the three claims, with the criteria written next to them:

1. with relevant sound, AV beats V by a clear margin: AV > V in every seed and the mean
   difference is at least :data:`CLEAR_MARGIN` (CC 0.05, NSS 0.25);
2. with unrelated music, AV is no worse than V: mean difference at least ``-NO_WORSE_TOLERANCE``
   (CC 0.02, NSS 0.1);
3. both beat the centre bias in every condition (means).

Runs are resumable: a seed's model that already finished in ``out`` is not trained again.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsal_deploy.config import Config, resolve_steps
from avsal_deploy.data.datasets import SaliencyDataset, open_dataset
from avsal_deploy.data.synthetic import AttentionModel, expected_density, read_annotations
from avsal_deploy.errors import BackendUnavailableError, ConfigError, DatasetError
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.training.checkpoints import load_trained_model
from avsal_deploy.training.data import VideoInputs
from avsal_deploy.training.evaluate import (
    center_predictor,
    dataset_inputs,
    evaluate_predictor,
    fit_center_sigma,
    model_predictor,
)
from avsal_deploy.training.recipe import DataSection, ModelSection, TrainConfig, TrainSection, load_recipe
from avsal_deploy.training.trainer import Trainer, TrainEvent

CONDITIONS: tuple[str, ...] = ("relevant", "music", "silent")
MODELS: dict[str, str] = {
    "av": "audio-visual",
    "v": "visual-only twin (silence in training and test)",
    "center": "centre bias (Gaussian fitted on train)",
}
METRICS: tuple[str, ...] = ("cc", "nss")
CLEAR_MARGIN: dict[str, float] = {"cc": 0.05, "nss": 0.25}
NO_WORSE_TOLERANCE: dict[str, float] = {"cc": 0.02, "nss": 0.1}
SET_NAME = "synthetic"

#: ``progress(message, event)``: a status line (event None) or a training event.
ExperimentProgress = Callable[[str, TrainEvent | None], None]


def audio_relevance_recipe() -> TrainConfig:
    """The experiment's recipe (``training/audio_relevance.toml`` holds the same values).

    Tiny profile with 16-frame windows (0.64 s at 25 fps: 1.3 to 3.8 periods of the 2-6 Hz object
    rhythms; 2 SoundNet frames), the hybrid variant (one-shot AVRSP loss + x0 MSE, equal weights),
    AdamW at 2e-3 (1e-3 and 2e-3 were tried on a separate synthetic set; 2e-3 learned faster)
    with warm-up and cosine decay, weight decay 1e-2, flip + channel-shuffle augmentation, a fixed
    budget of 900 steps of 8 windows and no validation split (see the module docstring), and deep
    supervision of the AV sync gate (``sync_weight`` 0.5: without it, one seed in two never learned
    to bind the sound to its object within the budget; the visual-only twin is unaffected, its
    silence passes the gate no gradient).
    """
    return TrainConfig(
        model=ModelSection(profile="tiny", variant="hybrid", overrides={"video.clip_len": 16}),
        data=DataSection(name=SET_NAME, val_split="", windows_per_video=8),
        train=TrainSection(
            epochs=1000,
            max_steps=900,
            batch_size=8,
            lr=2e-3,
            weight_decay=1e-2,
            scheduler="cosine",
            warmup_steps=50,
            grad_clip=1.0,
            diffusion_weight=1.0,
            sync_weight=0.5,
            log_every=25,
        ),
    )


def quick_overrides() -> dict[str, Any]:
    """A smoke-test budget: a few steps, small batches (shows the pipeline, not the claim)."""
    return {"train.max_steps": 3, "train.batch_size": 2, "train.warmup_steps": 0, "data.windows_per_video": 2}


def _scores_line(scores: dict[str, dict[str, float]], conditions: list[str]) -> str:
    return "  ".join(f"{c} CC {scores[c]['cc']:.3f} NSS {scores[c]['nss']:.3f}" for c in conditions)


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "per_seed": [float(v) for v in arr],
    }


def _claims(per_seed: dict[str, dict[str, dict[str, list[float]]]]) -> list[dict[str, Any]]:
    """Verdicts on the three claims from per-seed values ``[condition][model][metric]``."""
    out = []
    for metric in METRICS:
        if "relevant" in per_seed:
            av, v = (np.asarray(per_seed["relevant"][k][metric]) for k in ("av", "v"))
            diff = av - v
            holds = bool(np.all(diff > 0) and diff.mean() >= CLEAR_MARGIN[metric])
            out.append(
                {
                    "text": f"relevant sound: AV beats V on {metric.upper()} by >= {CLEAR_MARGIN[metric]} "
                    "(mean) and in every seed",
                    "holds": holds,
                    "mean_difference": float(diff.mean()),
                }
            )
    for metric in METRICS:
        if "music" in per_seed:
            av, v = (np.asarray(per_seed["music"][k][metric]) for k in ("av", "v"))
            diff = float((av - v).mean())
            out.append(
                {
                    "text": f"music: AV no worse than V on {metric.upper()} "
                    f"(mean difference >= -{NO_WORSE_TOLERANCE[metric]})",
                    "holds": bool(diff >= -NO_WORSE_TOLERANCE[metric]),
                    "mean_difference": diff,
                }
            )
    beats = []
    for by_model in per_seed.values():
        centre = {m: float(np.mean(by_model["center"][m])) for m in METRICS}
        for key in ("av", "v"):
            beats.append(all(float(np.mean(by_model[key][m])) > centre[m] for m in METRICS))
    out.append(
        {"text": "AV and V beat the centre bias on CC and NSS in every condition", "holds": all(beats)}
    )
    return out


REFERENCES: dict[str, str] = {
    "visual_ceiling": "expected map of the attention model, all objects alike (ignores the sound)",
    "oracle": "expected map of the attention model, knowing the sound source",
}


def reference_predictor(
    annotations: Mapping[str, tuple[dict[str, Any], AttentionModel]], know_source: bool
) -> Callable[..., np.ndarray]:
    """A predictor rendering the generator's expected density maps of each window's target frame
    from the videos' ``annotations`` (:func:`~avsal_deploy.data.synthetic.read_annotations` by
    video name); ``know_source``: the oracle, else the visual ceiling."""

    def predict(video: VideoInputs, windows: Any) -> np.ndarray:
        objects, attention = annotations[video.name]
        return expected_density(objects, attention, [w.target for w in windows], video.size, know_source)

    return predict


def mismatched_inputs(dataset: SaliencyDataset, config: Config, variant: str) -> list[VideoInputs]:
    """Each test video with the soundtrack of the next test video of the same condition.

    Scored with the audio-visual model, this separates the use of the sound's content (which object
    it belongs to) from the use of its mere presence: a model that binds sound to objects loses
    accuracy on ``relevant`` videos with a mismatched soundtrack, one that ignores the content
    scores the same. A condition with a single test video keeps its own soundtrack.
    """
    records = list(dataset)
    out = []
    for record in records:
        same = [r for r in records if r.condition == record.condition]
        partner = same[(same.index(record) + 1) % len(same)]
        out.append(VideoInputs(record, config, variant, "real", audio_record=partner))
    return out


def _train_and_score(
    recipe: TrainConfig,
    run_dir: Path,
    audio: str,
    stride: int,
    device: str | None,
    threads: int,
    progress: ExperimentProgress | None = None,
    control: bool = True,
) -> dict[str, Any]:
    """Train one model (unless ``run_dir`` holds a finished run) and score it on the test split.

    Returns ``{"seconds", "steps", "stopped", "stride", "scores": {condition: {metric: value}}}``,
    also kept in ``run_dir/done.json`` so that a re-run reuses it; a re-run with a larger
    ``train.max_steps`` continues the run from its last checkpoint (the cosine schedule is then
    re-spread over the new budget: a warm restart, recorded in ``extended_from``). Runs in a worker process when
    the experiment has several jobs (then ``threads`` bounds its torch threads).
    """
    done = run_dir / "done.json"
    previous: list[int] | None = None
    if done.is_file():
        record = json.loads(done.read_text())
        wants_control = audio == "real" and control
        budget = recipe.train.max_steps
        extend = (
            bool(budget) and record.get("stopped") == "max_steps" and int(record.get("steps", 0)) < budget
        )
        if extend:  # a larger step budget continues the finished run from its last checkpoint
            previous = [*record.get("extended_from", []), int(record.get("steps", 0))]
            done.unlink()
        elif record.get("stride") == stride and (not wants_control or "mismatched_scores" in record):
            return dict(record)
    if threads > 0:
        torch.set_num_threads(threads)
    last = run_dir / "checkpoints" / "last.safetensors"
    hook = None if progress is None else (lambda event: progress("", event))
    result = Trainer(recipe, run_dir, resume=last.is_file(), device=device, progress=hook).fit()
    model, config, variant, _ = load_trained_model(result.last_checkpoint, device or "cpu")
    test_set = open_dataset(recipe.data.root, SET_NAME, "test")
    inputs = dataset_inputs(test_set, config, variant, audio)  # type: ignore[arg-type]
    options = PredictOptions(seed=recipe.train.seed, batch_size=recipe.train.val_batch_size)
    predictor = model_predictor(model, options, device or "cpu")
    scores = evaluate_predictor(predictor, inputs, metrics=METRICS, stride=stride).by_condition()
    record: dict[str, Any] = {
        "seconds": round(result.seconds, 1),
        "steps": result.steps,
        "stopped": result.stopped,
        "stride": stride,
        "scores": scores,
    }
    if previous is not None:
        record["extended_from"] = previous
    if audio == "real" and control:  # control: does the model use WHAT it hears, or only THAT it hears?
        swapped = mismatched_inputs(test_set, config, variant)
        record["mismatched_scores"] = evaluate_predictor(
            predictor, swapped, metrics=METRICS, stride=stride
        ).by_condition()
    done.write_text(json.dumps(record, indent=1) + "\n")
    return record


@dataclass(frozen=True)
class _Setup:
    """What one run of the experiment works on: the data, the recipe and the scoring stride."""

    root: Path
    out_dir: Path
    test_set: SaliencyDataset
    train_set: SaliencyDataset
    conditions: list[str]
    base: TrainConfig
    config: Config
    variant: str
    stride: int
    quick: bool


def _setup(
    data: str | Path,
    out: str | Path,
    quick: bool,
    recipe_path: str | Path | None,
    overrides: dict[str, Any] | None,
    stride: int | None,
) -> _Setup:
    """Open the data set's splits (every test video has a condition) and make the recipe."""
    root = Path(data)
    test_set = open_dataset(root, SET_NAME, "test")
    train_set = open_dataset(root, SET_NAME, "train")
    missing = [v.name for v in test_set if v.condition is None]
    if missing:
        raise DatasetError(
            f"{root}: no condition for test video(s) {', '.join(missing[:5])} (conditions.json)"
        )
    conditions = [c for c in CONDITIONS if any(v.condition == c for v in test_set)]
    if not conditions:
        raise DatasetError(f"{root}: the test split has none of the conditions {', '.join(CONDITIONS)}")
    base = load_recipe(recipe_path) if recipe_path else audio_relevance_recipe()
    changes: dict[str, Any] = {"data.root": str(root.resolve()), "data.name": SET_NAME, "data.val_split": ""}
    if quick:
        changes.update(quick_overrides())
    changes.update(overrides or {})
    base = base.replace(changes)
    stride = (8 if quick else 1) if stride is None else int(stride)
    if stride < 1:
        raise ConfigError(f"--stride {stride}: must be >= 1")
    return _Setup(
        root,
        Path(out),
        test_set,
        train_set,
        conditions,
        base,
        base.model_config(),
        base.model.variant,
        stride,
        quick,
    )


def _baselines(s: _Setup, say: Callable[[str], None]) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """The seed-independent scores: the centre bias (fitted on train) and, for a generated set, the
    generator's visual ceiling and oracle. Returns (sigma, centre scores, references)."""
    train_inputs = dataset_inputs(s.train_set, s.config, s.variant, "real")
    sigma = fit_center_sigma(train_inputs, stride=4 if not s.quick else 16)
    say(f"centre bias: sigma {sigma} (fitted on train)")
    test_real = dataset_inputs(s.test_set, s.config, s.variant, "real")
    centre = evaluate_predictor(
        center_predictor(sigma), test_real, metrics=METRICS, stride=s.stride
    ).by_condition()
    references: dict[str, Any] = {}
    annotations = {v.name: read_annotations(s.root, v.name) for v in s.test_set}
    if all(a is not None for a in annotations.values()):
        for name, know in (("visual_ceiling", False), ("oracle", True)):
            predictor = reference_predictor(annotations, know)  # type: ignore[arg-type]
            references[name] = evaluate_predictor(
                predictor, test_real, metrics=METRICS, stride=s.stride
            ).by_condition()
        references["note"] = REFERENCES
        say("references: " + _scores_line(references["visual_ceiling"], s.conditions) + " (visual ceiling)")
    return sigma, centre, references


#: One training of the experiment: (seed, model key, audio mode, recipe, run directory).
_Run = tuple[int, str, str, TrainConfig, Path]


def _train_all(
    s: _Setup,
    runs: list[_Run],
    jobs: int,
    device: str | None,
    progress: ExperimentProgress | None,
    control: bool,
    say: Callable[[str], None],
) -> dict[tuple[int, str], dict[str, Any]]:
    """Train and score every run, here or in ``jobs`` worker processes; the records by (seed, key)."""
    records: dict[tuple[int, str], dict[str, Any]] = {}
    if jobs <= 1:
        for seed, key, audio, recipe, run_dir in runs:
            say(f"seed {seed}: {key} ({MODELS[key]}) -> {run_dir}")
            records[seed, key] = _train_and_score(
                recipe, run_dir, audio, s.stride, device, 0, progress, control
            )
            say(f"seed {seed} {key}: {_scores_line(records[seed, key]['scores'], s.conditions)}")
        return records
    threads = max(1, torch.get_num_threads() // jobs)
    say(f"{len(runs)} trainings in {jobs} worker processes ({threads} thread(s) each)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(_train_and_score, recipe, run_dir, audio, s.stride, device, threads, None, control): (
                seed,
                key,
            )
            for seed, key, audio, recipe, run_dir in runs
        }
        for future in as_completed(futures):
            seed, key = futures[future]
            records[seed, key] = future.result()
            say(f"seed {seed} {key}: {_scores_line(records[seed, key]['scores'], s.conditions)}")
    return records


def _per_seed(
    s: _Setup,
    runs: list[_Run],
    records: dict[tuple[int, str], dict[str, Any]],
    centre: dict[str, Any],
    seeds: int,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{condition: {model: {metric: [value per seed]}}}`` (the centre bias repeated per seed)."""
    per_seed: dict[str, dict[str, dict[str, list[float]]]] = {
        c: {k: {m: [] for m in METRICS} for k in MODELS} for c in s.conditions
    }
    for seed, key, *_ in runs:
        for c in s.conditions:
            for m in METRICS:
                per_seed[c][key][m].append(records[seed, key]["scores"][c][m])
    for c in s.conditions:
        for m in METRICS:
            per_seed[c]["center"][m] = [centre[c][m]] * seeds
    return per_seed


def _mismatched(
    s: _Setup, records: dict[tuple[int, str], dict[str, Any]], seeds: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """The AV model's scores with another video's soundtrack, over seeds (when every seed has them)."""
    return {
        c: {
            m: _stats([records[seed, "av"]["mismatched_scores"][c][m] for seed in range(seeds)])
            for m in METRICS
        }
        for c in s.conditions
        if all("mismatched_scores" in records[seed, "av"] for seed in range(seeds))
    }


def _write_results(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    try:
        from avsal_deploy.research.plots import plot_experiment

        plot_experiment(results, out_dir / "results.png")
    except BackendUnavailableError:  # no matplotlib: the JSON is the contract, the figure a bonus
        pass


def run_audio_relevance(
    data: str | Path,
    out: str | Path,
    *,
    seeds: int = 3,
    quick: bool = False,
    recipe_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    jobs: int = 1,
    progress: ExperimentProgress | None = None,
    stride: int | None = None,
    control: bool = True,
) -> dict[str, Any]:
    """Run the experiment (see the module docstring); write and return ``results.json``'s content.

    ``stride``: score every k-th test frame (default 1, or 8 with ``quick``); ``control=False``
    skips the mismatched-soundtrack control (halves the AV model's scoring time).

    ``jobs > 1`` trains (and scores) the models in that many worker processes, splitting the torch
    threads between them; results do not depend on it.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least one seed")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: need at least one")
    s = _setup(data, out, quick, recipe_path, overrides, stride)
    say = (lambda msg: progress(msg, None)) if progress is not None else (lambda msg: None)
    s.out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    sigma, centre, references = _baselines(s, say)
    runs: list[_Run] = [
        (
            seed,
            key,
            audio,
            s.base.replace({"train.seed": seed, "train.audio": audio}),
            s.out_dir / f"seed{seed}" / key,
        )
        for seed in range(seeds)
        for key, audio in (("av", "real"), ("v", "silent"))
    ]
    records = _train_all(s, runs, jobs, device, progress, control, say)
    timings = {f"seed{seed}/{key}": records[seed, key]["seconds"] for seed, key, *_ in runs}
    per_seed = _per_seed(s, runs, records, centre, seeds)
    results: dict[str, Any] = {
        "experiment": "audio-relevance",
        "data": str(s.root.resolve()),
        "set": SET_NAME,
        "split": "test",
        "variant": s.variant,
        "profile": s.config.profile,
        "ddim_steps": resolve_steps(s.config, s.variant, None),
        "quick": quick,
        "seeds": list(range(seeds)),
        "models": MODELS,
        "metrics": list(METRICS),
        "averaging": "per video over its frames (stride "
        f"{s.stride}), then over the videos of a condition; spread = sample std over seeds (ddof=1)",
        "test_videos": {c: sum(1 for v in s.test_set if v.condition == c) for c in s.conditions},
        "train_videos": len(s.train_set),
        "center_sigma": sigma,
        "conditions": {
            c: {k: {m: _stats(per_seed[c][k][m]) for m in METRICS} for k in MODELS} for c in s.conditions
        },
        "claims": _claims(per_seed),
        "controls": {
            "av_mismatched_audio": _mismatched(s, records, seeds),
            "note": "the av model scored with the soundtrack of another test video of the same condition",
        },
        "references": references,
        "criteria": {"clear_margin": CLEAR_MARGIN, "no_worse_tolerance": NO_WORSE_TOLERANCE},
        "recipe": replace(s.base, source=str(recipe_path or "built-in audio_relevance_recipe()")).to_dict(),
        "seconds": {"training_per_model": timings, "total": round(time.monotonic() - t_start, 1)},
    }
    _write_results(results, s.out_dir)
    return results
