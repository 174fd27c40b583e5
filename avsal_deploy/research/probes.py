"""Cheap probes of why an audio-visual model does or does not bind the sound to its object.

Each probe reads a generated synthetic set (:func:`avsal_deploy.data.synthetic.generate`, whose
``objects.json`` annotations say where every object is and which one is the sound source) and,
except :func:`binding_alignment`, a trained model. All run in seconds to a few minutes on a CPU.

- :func:`binding_alignment`: parameter-free. Does the luminance-envelope correlation map of
  :class:`~avsal_deploy.models.binding.BindingMap` peak on the true source? Top-1 accuracy among
  the objects of relevant windows, with lag tolerance (``lags``) and without (lag 0 only), by the
  video's audio lag.
- :func:`sync_gate_alignment`: where the fusion decoder's AV sync gate
  (:class:`~avsal_deploy.models.fusion.AudioVisualSync`) puts its weight: the softmax over space
  of its head-mean synchrony (what ``losses.sync_loss`` supervises) read at each object, the top-1
  accuracy of the source and its weight against the mean of the other objects, by audio lag.
- :func:`audio_rate_probe`: can a linear (ridge) probe recover the source's pulse rate from the
  audio encoder's pooled features? R^2 and nearest-grid-rate accuracy on the test videos, fitted
  on the train videos, next to the same probe on the input envelope's loudness spectrum.
- :func:`score_model`: CC per condition of a model with given DDIM steps and audio on a split
  (one-shot vs DDIM maps, train vs test: overfitting to the training videos' sources).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsal_deploy.config import Config
from avsal_deploy.data.datasets import open_dataset
from avsal_deploy.data.synthetic import SET_NAME, read_annotations
from avsal_deploy.errors import DatasetError
from avsal_deploy.models.binding import BindingMap
from avsal_deploy.models.build import AVSaliencyModel
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.training.data import VideoInputs
from avsal_deploy.training.evaluate import dataset_inputs, evaluate_predictor, model_predictor
from avsal_deploy.windows import Window, plan

#: Audio-lag bins (ms) the alignment probes report by.
LAG_BINS_MS: tuple[float, ...] = (0.0, 20.0, 40.0, 60.0)


def _relevant_videos(root: str | Path, split: str, config: Config, variant: str, audio: str = "real") -> list:
    dataset = open_dataset(root, SET_NAME, split)
    out = []
    for video in dataset_inputs(dataset, config, variant, audio):  # type: ignore[arg-type]
        if video.condition != "relevant":
            continue
        ann = read_annotations(root, video.name)
        if ann is None:
            raise DatasetError(
                f"{root}: no objects.json for {video.name} (not written by synthetic.generate)"
            )
        out.append((video, ann[0]))
    if not out:
        raise DatasetError(f"{root}: no relevant video in the {split} split")
    return out


def _windows(video: VideoInputs, stride: int) -> list[Window]:
    return [
        w for w in plan(video.n_frames, video.config, video.variant, stride=stride).windows if not w.padded
    ]


def _object_cells(objects: dict[str, Any], frame: int, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """(row, col) of every object's centre at ``frame`` on a ``grid`` of the stored frame."""
    h, w = (int(v) for v in objects["size"])
    gh, gw = grid
    cells = []
    for obj in objects["objects"]:
        x, y = obj["centres"][frame]
        cells.append((min(gh - 1, max(0, int(y / h * gh))), min(gw - 1, max(0, int(x / w * gw)))))
    return cells


def _lag_ms(objects: dict[str, Any]) -> float:
    return 1000.0 * float(objects.get("audio_lag_s", 0.0))


def _lag_bin(lag_ms: float) -> str:
    edges = LAG_BINS_MS
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if lag_ms < hi:
            return f"{lo:g}-{hi:g} ms"
    return f">={edges[-1]:g} ms"


def _summarise(rows: list[tuple[str, bool, float, float]]) -> dict[str, Any]:
    """rows (lag bin, source is top-1, source weight, mean weight of the others) -> summary."""

    def agg(sel: list[tuple[str, bool, float, float]]) -> dict[str, float]:
        return {
            "windows": len(sel),
            "source_top1": float(np.mean([r[1] for r in sel])),
            "source_value": float(np.mean([r[2] for r in sel])),
            "others_value": float(np.mean([r[3] for r in sel])),
        }

    bins = sorted({r[0] for r in rows})
    return {**agg(rows), "by_lag": {b: agg([r for r in rows if r[0] == b]) for b in bins}}


def binding_alignment(
    root: str | Path, config: Config, split: str = "test", stride: int = 4, lags: int | None = None
) -> dict[str, Any]:
    """Does the parameter-free binding map peak on the sound source? (see the module docstring)

    Returns ``{"lag_tolerant": summary, "lag0": summary, "chance": mean 1/K}`` where a summary
    holds ``source_top1`` (fraction of windows whose largest correlation among the objects' cells
    is the source's), ``source_value`` / ``others_value`` (mean correlation there) and ``by_lag``.
    """
    fc = config.fusion
    scale = config.fusion_scales()[fc.binding_scale]
    grid = (scale.height, scale.width)
    max_lag = fc.binding_lags if lags is None else int(lags)
    maps = {"lag_tolerant": BindingMap(config, grid, max_lag), "lag0": BindingMap(config, grid, 0)}
    rows: dict[str, list[tuple[str, bool, float, float]]] = {k: [] for k in maps}
    chance = []
    cfg = config if config.uses_envelope("hybrid") else config.replace({"fusion.binding": True})
    for video, objects in _relevant_videos(root, split, cfg, "hybrid"):
        source = int(objects["source"])
        for window in _windows(video, stride):
            frames = torch.from_numpy(video.clip(window))[None]
            env = torch.from_numpy(video.envelope(window))[None]  # type: ignore[arg-type]
            cells = _object_cells(objects, window.target, grid)
            chance.append(1.0 / len(cells))
            for key, module in maps.items():
                corr = module(frames, env)[0, 0].numpy()
                values = np.array([corr[r, c] for r, c in cells])
                others = np.delete(values, source)
                rows[key].append(
                    (
                        _lag_bin(_lag_ms(objects)),
                        bool(values.argmax() == source),
                        float(values[source]),
                        float(others.mean()),
                    )
                )
    return {
        **{k: _summarise(v) for k, v in rows.items()},
        "chance": float(np.mean(chance)),
        "max_lag": max_lag,
    }


def sync_gate_alignment(
    model: AVSaliencyModel, root: str | Path, split: str = "test", stride: int = 4
) -> dict[str, Any]:
    """Where the AV sync gate puts its weight against the true source (see the module docstring).

    ``source_value`` / ``others_value`` are the gate's spatial softmax weights (times the number of
    grid cells, so 1 is uniform) at the source's cell and at the other objects' cells (mean).
    """
    if model.fusion is None or model.fusion.sync is None:
        raise DatasetError(
            "sync_gate_alignment: the model's fusion decoder has no AV sync gate (fusion.av_sync)"
        )
    rows: list[tuple[str, bool, float, float]] = []
    model.eval()
    # the gate's synchrony comes back in the decoder's auxiliary outputs (Conditioning.aux)
    for video, objects in _relevant_videos(root, split, model.config, model.variant):
        source = int(objects["source"])
        windows = _windows(video, stride)
        frames = torch.from_numpy(np.stack([video.clip(w) for w in windows]))
        audio = torch.from_numpy(np.stack([video.audio_input(w) for w in windows]))
        env = torch.from_numpy(np.stack([video.envelope(w) for w in windows]))  # type: ignore[misc]
        with torch.no_grad():
            aux = model.condition(frames, audio, env).aux
            syn = aux.synchrony.mean(dim=1)  # [B, h, w]
            b, h, w = syn.shape
            weight = torch.softmax(syn.flatten(1), dim=1).reshape(b, h, w).numpy() * (h * w)
        for i, window in enumerate(windows):
            cells = _object_cells(objects, window.target, (h, w))
            values = np.array([weight[i, r, c] for r, c in cells])
            others = np.delete(values, source)
            rows.append(
                (
                    _lag_bin(_lag_ms(objects)),
                    bool(values.argmax() == source),
                    float(values[source]),
                    float(others.mean()),
                )
            )
    return _summarise(rows)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    a = z.T @ z + alpha * np.eye(z.shape[1])
    coef = np.linalg.solve(a, z.T @ (y - y.mean()))
    return mu, sd, np.concatenate([[y.mean()], coef])


#: Ridge penalty of the rate probe (on standardised features; fixed, not tuned on the test split).
RIDGE_ALPHA = 10.0


def _probe(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], grid: np.ndarray
) -> dict[str, float]:
    (xtr, ytr), (xte, yte) = train, test
    mu, sd, c = _ridge(xtr, ytr, RIDGE_ALPHA)

    def r2(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        pred = c[0] + ((x - mu) / sd) @ c[1:]
        return float(1.0 - np.mean((pred - y) ** 2) / max(float(np.var(y)), 1e-12)), pred

    r2_tr, _ = r2(xtr, ytr)
    r2_te, pred = r2(xte, yte)
    nearest = grid[np.abs(pred[:, None] - grid[None, :]).argmin(1)]
    truth = grid[np.abs(yte[:, None] - grid[None, :]).argmin(1)]
    return {"train_r2": r2_tr, "test_r2": r2_te, "test_rate_accuracy": float(np.mean(nearest == truth))}


def audio_rate_probe(
    model: AVSaliencyModel, root: str | Path, stride: int = 4, grid_hz: Sequence[float] = (2, 3, 4, 5, 6)
) -> dict[str, Any]:
    """Linear probe of the source's pulse rate from the audio features (see the module docstring).

    Features per window: the audio encoder's output averaged over its positions (``audio_encoder``)
    and, as a reference that the information is in the input, the magnitude spectrum of the
    window's envelope loudness (``envelope_spectrum``). Chance accuracy is about 1 / len(grid).
    """
    grid = np.asarray(grid_hz, np.float64)
    data: dict[str, dict[str, list]] = {}
    model.eval()
    for split in ("train", "test"):
        feats: dict[str, list] = {"audio_encoder": [], "envelope_spectrum": [], "rate": []}
        for video, objects in _relevant_videos(root, split, model.config, model.variant):
            rate = float(objects["objects"][int(objects["source"])]["rhythm_hz"])
            windows = _windows(video, stride)
            audio = torch.from_numpy(np.stack([video.audio_input(w) for w in windows]))
            with torch.no_grad():
                a = model.audio_encoder(audio).flatten(2).mean(-1).numpy()
            for i, window in enumerate(windows):
                env = video.envelope(window)
                if env is None:
                    raise DatasetError(
                        "audio_rate_probe: the model takes no envelope (fusion.av_sync/binding)"
                    )
                loud = env[-1] - env[-1].mean()
                feats["audio_encoder"].append(a[i])
                feats["envelope_spectrum"].append(np.abs(np.fft.rfft(loud)))
                feats["rate"].append(rate)
        data[split] = feats
    y = {s: np.asarray(data[s]["rate"]) for s in data}
    out: dict[str, Any] = {"windows": {s: int(len(y[s])) for s in y}, "chance": float(1.0 / len(grid))}
    for key in ("audio_encoder", "envelope_spectrum"):
        out[key] = _probe(
            (np.asarray(data["train"][key]), y["train"]), (np.asarray(data["test"][key]), y["test"]), grid
        )
    return out


def score_model(
    model: AVSaliencyModel,
    root: str | Path,
    split: str = "test",
    steps: int | None = None,
    audio: str = "real",
    stride: int = 4,
) -> dict[str, float]:
    """CC per condition of ``model`` on ``split`` with ``steps`` DDIM steps (0: one-shot map)."""
    dataset = open_dataset(root, SET_NAME, split)
    inputs = dataset_inputs(dataset, model.config, model.variant, audio)  # type: ignore[arg-type]
    predictor = model_predictor(model, PredictOptions(steps=steps, batch_size=16), "cpu")
    scores = evaluate_predictor(predictor, inputs, metrics=("cc",), stride=stride).by_condition()
    return {c: float(v["cc"]) for c, v in scores.items()}


def run_probes(
    root: str | Path,
    av: str | Path | None = None,
    v: str | Path | None = None,
    stride: int = 4,
    progress: Any = None,
) -> dict[str, Any]:
    """Every probe on a generated set: the binding map's alignment (no model), and with the ``av``
    (and ``v``) checkpoints the sync gate, the audio-rate probe and CC one-shot vs DDIM, train vs
    test."""
    from avsal_deploy.config import load_config
    from avsal_deploy.training.checkpoints import load_trained_model

    say = progress or (lambda _m: None)
    out: dict[str, Any] = {"data": str(root), "stride": stride}
    config = load_config("tiny", {"video.clip_len": 16})
    if av is not None:
        config = load_trained_model(av)[1]
    say("binding map alignment")
    out["binding_alignment"] = binding_alignment(
        root, config.replace({"fusion.binding": True}), stride=stride
    )
    for key, path in (("av", av), ("v", v)):
        if path is None:
            continue
        model, _, _, _ = load_trained_model(path)
        entry: dict[str, Any] = {"checkpoint": str(path), "binding": model.config.fusion.binding}
        audio = "real" if key == "av" else "silent"
        if key == "av":
            say(f"{key}: sync gate alignment")
            entry["sync_gate"] = sync_gate_alignment(model, root, stride=stride)
            say(f"{key}: audio-rate probe")
            entry["audio_rate_probe"] = audio_rate_probe(model, root, stride=stride)
        say(f"{key}: CC one-shot vs DDIM, train vs test")
        entry["cc"] = {
            "test_ddim": score_model(model, root, "test", None, audio, stride),
            "test_oneshot": score_model(model, root, "test", 0, audio, stride),
            "train_ddim": score_model(model, root, "train", None, audio, 2 * stride),
        }
        out[key] = entry
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m avsal_deploy.research.probes DATA [--av CKPT] [--v CKPT] [--out JSON]``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m avsal_deploy.research.probes", description=__doc__)
    p.add_argument("data", help="a set written by avsal_deploy.data.synthetic.generate")
    p.add_argument("--av", default=None, help="the audio-visual model's checkpoint")
    p.add_argument("--v", default=None, help="its visual-only twin's checkpoint")
    p.add_argument("--stride", type=int, default=4, help="every k-th window (default 4)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_probes(args.data, args.av, args.v, args.stride, progress=lambda m: print(m, flush=True))
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
