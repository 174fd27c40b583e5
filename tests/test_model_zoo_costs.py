"""The model zoo's measured cost: the suite's cases -> the report's table -> the results file ->
``avsal models`` and the generated block of docs/models/index.md. Nothing here times anything
(the suite itself, ``benchmarks/test_model_zoo.py``, runs in ``avsal bench``; its quick form runs
here only under the ``long`` marker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avsal_deploy.bench import zoo
from avsal_deploy.bench.report import derive
from avsal_deploy.cli import main
from avsal_deploy.config import family_config, load_config
from avsal_deploy.errors import AvsalError
from avsal_deploy.models import costs as zoo_costs
from avsal_deploy.models.costs import cost_key, find_row, measured_on, read_costs, seconds_per_frame

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "models" / "index.md"


def _case(median: float, entry: zoo.ZooEntry, backend: str, batch: int, **extra) -> dict:
    name = f"test_zoo_window[{entry.id}-{backend}-b{batch}]"
    info = {"metric": "zoo", **entry.info(), "backend": backend, "batch": batch, "gflop_per_window": 2.0}
    info |= {"gflop": 2.0 * batch, "quick": False, "onnxruntime": "9.9.9", "torch": "8.8.8", **extra}
    return {"name": name, "fullname": name, "stats": {"median": median}, "extra_info": info}


def _raw(quick: bool = False) -> dict:
    """hybrid tiny measured in full; tased with torch b8 skipped over the budget."""
    hybrid = zoo.ZooEntry("hybrid", "tiny", load_config("tiny"))
    tased = zoo.ZooEntry("tased", None, family_config("tased"))
    cases = [
        _case(0.01, hybrid, "onnxruntime", 1, quick=quick),
        _case(0.04, hybrid, "onnxruntime", 8, quick=quick),
        _case(0.03, hybrid, "torch", 1, torch_b8_estimate_s=1.0, quick=quick),
        _case(0.16, hybrid, "torch", 8, quick=quick),
        _case(2.0, tased, "onnxruntime", 1, quick=quick),
        _case(8.0, tased, "onnxruntime", 8, quick=quick),
        _case(5.0, tased, "torch", 1, torch_b8_estimate_s=160.0, quick=quick),
    ]
    gemm = {"name": "gemm", "fullname": "gemm", "stats": {"median": 1.0}}
    gemm["extra_info"] = {"metric": "gemm", "gflops": 100.0}
    machine = {"cpu": {"brand_raw": "Test CPU 3 GHz", "count": 2, "flags": ["avx2", "fma", "sse2"]}}
    return {
        "benchmarks": [gemm, *cases],
        "machine_info": machine,
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "datetime": "2026-12-07T10:00:00+00:00",
    }


def test_zoo_table_gives_seconds_per_frame_and_the_share_of_the_gemm_limit() -> None:
    report = derive(_raw())
    rows = {r["family"]: r for r in report["tables"]["model_zoo"]}
    assert list(rows) == ["hybrid", "tased"]  # the zoo's order
    h, t = rows["hybrid"], rows["tased"]
    assert (h["onnxruntime_b1"], h["onnxruntime_b8"]) == (0.01, 0.005)  # batch 8: per frame
    assert (h["torch_b1"], h["torch_b8"]) == (0.03, 0.02)
    assert h["gemm_share_onnxruntime_b1"] == pytest.approx(2.0 / 0.01 / 100.0)
    assert h["gemm_share_onnxruntime_b8"] == pytest.approx(16.0 / 0.04 / 100.0)
    assert h["note"] == "" and h["input"] == "8x64x96" and h["steps"] == 2
    assert t["torch_b8"] is None and "torch b8 not run: about 160 s" in t["note"]
    assert t["profile"] is None and t["input"] == "32x224x384"
    m = report["measured"]
    assert (m["cpu"], m["cpus"], m["commit"], m["simd"]) == ("Test CPU 3 GHz", 2, "0123456", ["avx2", "fma"])
    assert (m["onnxruntime"], m["torch"]) == ("9.9.9", "8.8.8")


def test_the_report_writes_the_results_file_and_install_refuses_a_quick_run(tmp_path: Path) -> None:
    for quick, name in ((False, "full"), (True, "quick")):
        raw = tmp_path / f"{name}.json"
        raw.write_text(json.dumps(_raw(quick)))
        out = tmp_path / name
        assert main(["-q", "bench", "--out", str(out), "--from-json", str(raw), "--no-node-profile"]) == 0
        assert "## Model zoo" in (out / "report.md").read_text()
    full = read_costs(tmp_path / "full" / "model_zoo_costs.json")
    assert full is not None and full["quick"] is False
    assert full["measured"]["gemm_gflops"] == 100.0 and full["measured"]["datetime"].startswith("2026-12-07")
    row = find_row(full, "hybrid", cost_key(load_config("tiny"), "hybrid"))
    assert row is not None and row["s_per_frame"]["onnxruntime_b8"] == 0.005
    assert find_row(full, "hybrid", cost_key(load_config("small"), "hybrid")) is None
    destination = tmp_path / "installed.json"
    with pytest.raises(AvsalError, match="quick run"):
        zoo.install(tmp_path / "quick" / "model_zoo_costs.json", destination)
    assert not destination.exists()
    zoo.install(tmp_path / "full" / "model_zoo_costs.json", destination)
    assert read_costs(destination) == full


def test_install_command_puts_the_costs_in_the_package_and_the_page(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(_raw()))
    assert main(["-q", "bench", "--out", str(tmp_path), "--from-json", str(raw), "--no-node-profile"]) == 0
    page = tmp_path / "index.md"
    page.write_text("# Models\n\n" + zoo.render_block(None) + "\n")
    packaged = tmp_path / "package" / "model_zoo_costs.json"
    packaged.parent.mkdir()
    monkeypatch.setattr(zoo_costs, "COSTS_FILE", packaged)
    assert zoo.main(["docs", "--page", str(page), "--check"]) == 0  # nothing installed: the note
    assert zoo.main(["install", str(tmp_path / "model_zoo_costs.json"), "--page", str(page)]) == 0
    assert read_costs(packaged) == read_costs(tmp_path / "model_zoo_costs.json")
    assert "| `hybrid` | tiny |" in page.read_text()
    assert zoo.main(["docs", "--page", str(page), "--check"]) == 0  # current with the installed file
    assert zoo.main(["install", str(tmp_path / "absent.json"), "--page", str(page)]) == 2


def _costs() -> dict:
    report = derive(_raw())
    costs = zoo.costs_from_report(report)
    assert costs is not None
    return costs


def test_a_row_applies_only_to_the_same_architecture_inputs_and_steps() -> None:
    costs = _costs()
    tiny = load_config("tiny")
    assert seconds_per_frame(find_row(costs, "hybrid", cost_key(tiny, "hybrid"))) == 0.01
    assert seconds_per_frame(find_row(costs, "hybrid", cost_key(tiny, "hybrid")), "torch_b8") == 0.02
    for changed in ({"diffusion.sampling_steps": 4}, {"video.height": 96}, {"unet.heads": 4}):
        assert find_row(costs, "hybrid", cost_key(tiny.replace(changed), "hybrid")) is None, changed
    assert find_row(costs, "avrsp", cost_key(tiny, "avrsp")) is None  # not measured
    assert seconds_per_frame(None) is None and find_row(None, "hybrid", {}) is None
    line = measured_on(costs)
    assert line is not None
    assert line.startswith("2026-12-07, Test CPU 3 GHz x 2 CPUs (AVX2+FMA)") and "commit 0123456" in line
    assert "onnxruntime 9.9.9" in line


def test_read_costs_refuses_another_file(tmp_path: Path) -> None:
    assert read_costs(tmp_path / "absent.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(AvsalError, match="not a model-zoo costs file"):
        read_costs(bad)


def test_models_command_shows_the_measured_column(monkeypatch, capsys) -> None:
    from avsal_deploy.models import zoo as zoo_rows

    base = {"origin": "avsal", "params": 1e6, "gflops_per_window": 0.1, "steps": 2, "audio": True}
    base |= {"input_mode": "8x64x96", "summary": "", "source": "", "weights_licence": "-"}
    rows = [
        {**base, "family": "hybrid", "profile": "tiny", "s_per_frame_ort_b1": 0.0123, "cost_measured": "M"},
        {**base, "family": "avrsp", "profile": "tiny", "s_per_frame_ort_b1": None, "cost_measured": None},
    ]
    monkeypatch.setattr(zoo_rows, "model_zoo", lambda: rows)
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "s/frame (ONNX Runtime, batch 1)" in out[0]
    assert "0.0123" in out[1] and out[2].split()[4] == "-"
    assert any(line.startswith("s/frame:") and "measured M" in line for line in out)


@pytest.mark.slow
def test_model_zoo_reads_the_packaged_results_file(tmp_path: Path, monkeypatch) -> None:
    """``model_zoo()`` (every family built on the meta device: ~15 s on 2 cores)."""
    from avsal_deploy.models.zoo import model_zoo

    path = tmp_path / "costs.json"
    path.write_text(json.dumps(_costs()))
    monkeypatch.setattr(zoo_costs, "COSTS_FILE", path)
    rows = {(r["family"], r["profile"]): r for r in model_zoo()}
    assert rows[("hybrid", "tiny")]["s_per_frame_ort_b1"] == 0.01
    assert rows[("hybrid", "tiny")]["cost_measured"].startswith("2026-12-07, Test CPU")
    assert rows[("tased", None)]["s_per_frame_ort_b1"] == 2.0
    assert rows[("hybrid", "small")]["s_per_frame_ort_b1"] is None
    assert rows[("hybrid", "small")]["cost_measured"] is None


def test_docs_block_is_current_with_the_packaged_results_file() -> None:
    """docs/models/index.md's generated block is what ``python -m avsal_deploy.bench.zoo docs``
    writes from avsal_deploy/assets/model_zoo_costs.json (the "not yet measured" note without it)."""
    assert zoo.update_page(PAGE, read_costs(), check=True) is False, (
        "run: python -m avsal_deploy.bench.zoo docs"
    )


def test_docs_generator_rewrites_only_its_block(tmp_path: Path, capsys) -> None:
    page = tmp_path / "index.md"
    page.write_text("# Models\n\nbefore\n\n" + zoo.render_block(None) + "\n\nafter\n")
    before = page.read_text()
    assert zoo.update_page(page, None) is False
    costs = _costs()
    assert zoo.update_page(page, costs, check=True) is True and page.read_text() == before  # check: no write
    assert zoo.update_page(page, costs) is True
    text = page.read_text()
    assert text.startswith("# Models\n\nbefore\n\n") and text.endswith(f"{zoo.PAGE_END}\n\nafter\n")
    assert "not yet measured" not in text and "Measured **2026-12-07** at commit **0123456**" in text
    assert "| `hybrid` | tiny | 8x64x96 | 2 | 2 | 0.01 | 0.005 | 0.03 | 0.02 |  |" in text
    assert "| `tased` | official | 32x224x384 |" in text and "torch b8 not run" in text
    assert zoo.update_page(page, costs) is False  # idempotent
    assert zoo.main(["docs", "--page", str(page), "--check"]) == 1  # the packaged file is not these costs
    assert "not current" in capsys.readouterr().out
    page.write_text("no block here\n")
    with pytest.raises(AvsalError, match="no `<!-- BEGIN GENERATED"):
        zoo.update_page(page, costs)


def test_entries_every_family_at_its_deployed_size_and_the_quick_sizes() -> None:
    full = {(e.family, e.profile): e for e in zoo.zoo_entries(["tiny", "paper"])}
    assert ("hybrid", "tiny") in full and ("hybrid", "paper") in full and ("hybrid", "small") not in full
    official = [e for e in full.values() if e.profile is None]
    assert {e.family for e in official} == {f for f, o in zoo.QUICK_OFFICIAL.items()}
    assert all(e.input.endswith("x224x384") and not e.reduced for e in official)
    quick = {(e.family, e.profile): e for e in zoo.zoo_entries(["tiny"], quick=True)}
    assert ("avinet", None) not in quick and not quick[("hybrid", "tiny")].reduced
    assert quick[("vinet", None)].input == "32x64x96" and quick[("vinet", None)].reduced
    assert [e.id for e in zoo.zoo_entries(["small"], families=["tased", "avrsp"])] == [
        "tased-official",
        "avrsp-small",
    ]
    assert zoo.torch_b8_estimate(1.0) == (zoo.WARMUP + zoo.ROUNDS) * 8


def test_the_quick_sizes_fit_the_official_networks() -> None:
    """Each reduced config passes its family's shape checks (the stages built on the meta device)."""
    import torch

    from avsal_deploy.models.build import build_model

    for entry in zoo.zoo_entries([], quick=True):
        with torch.device("meta"):
            build_model(entry.config, entry.family)


@pytest.mark.long
def test_quick_suite_runs_through_avsal_bench(tmp_path: Path) -> None:
    """``avsal bench --quick --suite test_model_zoo.py`` for one small family: its table and
    results file (exports into a private cache: about a minute on 2 cores)."""
    env = dict(os.environ, AVSAL_CACHE=str(tmp_path / "cache"), AVSAL_BENCH_FAMILIES="hybrid")
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "avsal_deploy.cli", "-q", "bench", "--out", str(out), "--quick"]
    cmd += ["--profile", "tiny", "--suite", "test_model_zoo.py", "--no-node-profile"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=900)
    costs = read_costs(out / "model_zoo_costs.json")
    assert costs is not None and costs["quick"] is True
    (row,) = costs["rows"]
    assert row["family"] == "hybrid" and row["profile"] == "tiny"
    assert row["s_per_frame"]["onnxruntime_b1"] > 0 and row["s_per_frame"]["torch_b1"] > 0
    assert row["s_per_frame"]["onnxruntime_b8"] is None  # quick: batch 1 only
