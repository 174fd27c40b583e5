"""Every model family's torch engine on a CUDA GPU: fp32 and fp16, CUDA graphs for the UNet step,
parity to the CPU maps, frames/s at batch 1 and 8. Run it with ``bash benchmarks/gpu_check.sh``
(an 8-minute limit) on a machine with an NVIDIA GPU and CUDA PyTorch; TensorRT is not needed::

    bash benchmarks/gpu_check.sh --json out/gpu-check.json

Each family is built at its deployed size (ours at ``--profile``, default small; the official ones
at their input mode), randomly initialised (seed 0): the cost is the architecture's. Its CPU maps
(torch eager, fp32, batch 1) are the reference; on the GPU it runs

- ``fp32``: the torch engine on ``--device``, the UNet step replayed from a CUDA graph captured
  per batch size (static input buffers; ``--no-graphs`` runs it eagerly);
- ``fp16``: the same under ``torch.autocast(float16)`` (weights stay fp32; the autocast cache is
  off, as CUDA graph capture requires),

and reports per family, precision and batch: frames/s (one window per output frame, the window
timed end to end: numpy in, maps out) and the lowest CC of the batch's maps to the CPU maps
(target >= 0.999). Without a GPU it exits with status 3 and says so; ``--device cpu`` runs the
same code on the CPU (fp32 only, no graphs), which is how the tests check it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: Exit status when the GPU the check needs is not there.
NEEDS_A_GPU = 3
CC_TARGET = 0.999


def _engine_class():
    import torch

    from avsal_deploy.engine.eager import TorchEngine

    class CudaTorchEngine(TorchEngine):
        """The torch engine with autocast fp16 and a CUDA graph per UNet-step input shape."""

        def __init__(self, model, specs, device: str, precision: str, graphs: bool) -> None:
            super().__init__(model, specs, device)
            self.precision = precision
            self.graphs = graphs and self.device.type == "cuda"
            self._captured: dict[tuple, tuple] = {}

        @torch.inference_mode()
        def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            spec = self.specs[component]
            args = [
                torch.from_numpy(np.asarray(feeds[n], np.float32)).to(self.device) for n in spec.input_names
            ]
            fp16 = self.precision == "fp16"
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=fp16, cache_enabled=False):
                if self.graphs and component == "unet_step":
                    outs = self._replay(component, args)
                else:
                    out = self._modules[component](*args)
                    outs = out if isinstance(out, tuple) else (out,)
            return {n: o.float().cpu().numpy() for n, o in zip(spec.output_names, outs, strict=True)}

        def _replay(self, component: str, args: list) -> tuple:
            key = (component, *(tuple(a.shape) for a in args))
            if key not in self._captured:
                static = [a.clone() for a in args]
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):  # kernels chosen and workspaces allocated before capture
                        self._modules[component](*static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = self._modules[component](*static)
                self._captured[key] = (graph, static, out if isinstance(out, tuple) else (out,))
            graph, static, outs = self._captured[key]
            for buffer, a in zip(static, args, strict=True):
                buffer.copy_(a)
            graph.replay()
            return outs

    return CudaTorchEngine


def check_family(entry, args: argparse.Namespace, batches: list[int]) -> list[dict]:
    import torch

    from avsal_deploy.engine.eager import TorchEngine
    from avsal_deploy.metrics import cc_batch
    from avsal_deploy.models.build import build_model
    from avsal_deploy.specs import sample_window

    torch.manual_seed(0)
    model = build_model(entry.config, entry.family).eval()
    reference = TorchEngine(model)  # CPU, fp32
    largest = max(batches)
    window = sample_window(reference.specs, batch=largest, seed=0)
    window.setdefault("audio", np.zeros((largest, 0), np.float32))  # a visual-only family
    noise = reference.make_noise(largest, 0)
    envelope = window.get("envelope")

    def inputs(b: int) -> tuple:
        return window["frames"][:b], window["audio"][:b], None, noise[:b]

    # every batch is the first rows of the largest one, so the CPU maps of that one are the reference
    cpu_maps = reference.predict_window(*inputs(largest), envelope=envelope)[:, 0]
    engine_class = _engine_class()
    precisions = ["fp32", "fp16"] if args.device != "cpu" else ["fp32"]
    rows = []
    for precision in precisions:
        engine = engine_class(model, reference.specs, args.device, precision, not args.no_graphs)
        for b in batches:
            envelope_b = None if envelope is None else envelope[:b]
            maps = engine.predict_window(*inputs(b), envelope=envelope_b)[:, 0]
            engine.predict_window(*inputs(b), envelope=envelope_b)  # graphs captured: both are warm-up
            start = time.perf_counter()
            for _ in range(args.reps):
                engine.predict_window(*inputs(b), envelope=envelope_b)
            seconds = (time.perf_counter() - start) / args.reps
            worst_cc = float(np.nanmin(cc_batch(maps, cpu_maps[:b])))
            rows.append(
                {
                    "family": entry.family,
                    "size": entry.profile or "official",
                    "input": entry.input,
                    "device": args.device,
                    "precision": precision,
                    "cuda_graphs": engine.graphs,
                    "batch": b,
                    "frames_per_second": round(b / seconds, 2),
                    "window_ms": round(1000.0 * seconds, 2),
                    "cc_to_cpu": round(worst_cc, 5),
                    "parity": worst_cc >= CC_TARGET,
                }
            )
    del model, reference, engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default: cuda; cpu checks the script)")
    p.add_argument("--profile", default="small", help="size of our families (default: small)")
    p.add_argument("--families", default="", help="comma-separated families (default: every one)")
    p.add_argument("--batches", default="1,8", help="window batches (default: 1,8)")
    p.add_argument("--reps", type=int, default=5, help="timed windows per case after two warm-up ones")
    p.add_argument("--no-graphs", action="store_true", help="run the UNet step eagerly")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: needs a GPU: torch {torch.__version__} sees no CUDA device "
            f"(built for CUDA {torch.version.cuda or 'none'}); nothing was run",
            file=sys.stderr,
        )
        return NEEDS_A_GPU

    from avsal_deploy.bench.zoo import zoo_entries
    from avsal_deploy.config import FAMILIES

    families = [f.strip() for f in args.families.split(",") if f.strip()] or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown famil(ies) {unknown}: choose from {', '.join(FAMILIES)}")
    batches = sorted({int(b) for b in args.batches.split(",")})
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"gpu_check on {device}, torch {torch.__version__}", flush=True)
    rows = []
    for entry in zoo_entries([args.profile], families=families):
        for row in check_family(entry, args, batches):
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {"device": device, "torch": torch.__version__, "cc_target": CC_TARGET, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    failed = [r for r in rows if r["parity"] is False]
    for r in failed:
        print(
            f"parity below {CC_TARGET}: {r['family']} {r['precision']} batch {r['batch']}: CC {r['cc_to_cpu']}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
