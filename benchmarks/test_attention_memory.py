"""DiffSal Table 4's claim: efficient spatio-temporal cross-attention (ECA) needs far less memory
than standard cross-attention. Measured as the peak resident memory of one Saliency-UNet forward
in a fresh process, ECA and standard side by side, plus the analytic size of the score tensors.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from avsal_deploy.config import load_config
from avsal_deploy.models.unet import attention_memory_bytes

CHILD = r"""
import json, resource, sys, torch
from avsal_deploy.config import load_config
from avsal_deploy.models.build import build_model
from avsal_deploy.export.components import component_specs
cfg = load_config(sys.argv[1], {"unet.efficient_attention": sys.argv[2] == "eca"})
torch.manual_seed(0)
model = build_model(cfg, "hybrid").eval()
spec = component_specs(cfg, "hybrid")["unet_step"]
args = [torch.from_numpy(x) for x in spec.sample_inputs(1).values()]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    model.unet(*args)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": after, "forward_kib": after - before}))
"""


def _measure(profile: str, mode: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, profile, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["eca", "standard"])
def test_unet_forward_peak_memory(benchmark, mode) -> None:
    profile = "small"
    result = benchmark.pedantic(_measure, args=(profile, mode), rounds=1, iterations=1)
    config = load_config(profile)
    scores = attention_memory_bytes(config, "hybrid", efficient=mode == "eca")
    benchmark.group = f"Saliency-UNet forward memory ({profile}, hybrid)"
    benchmark.extra_info.update(result | {"attention_scores_bytes": scores, "mode": mode})
    assert result["forward_kib"] >= 0
