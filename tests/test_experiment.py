"""The audio-relevance experiment in --quick mode: the results.json contract (not the claim, which
the real run shows; see avsal_deploy/assets/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avsal_deploy.cli import main
from avsal_deploy.data.synthetic import generate
from avsal_deploy.errors import DatasetError
from avsal_deploy.research.experiment import CONDITIONS, METRICS, MODELS, run_audio_relevance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), 6, profile="tiny", seed=5, n_frames=16)


@pytest.mark.slow
def test_quick_experiment_writes_the_contract(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exp"
    code = main(
        ["experiment", "audio-relevance", "--data", str(data), "--out", str(out), "--seeds", "2", "--quick"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "claims:" in printed and "relevant" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["quick"] is True
    assert set(results["conditions"]) == set(CONDITIONS)
    for cond in CONDITIONS:
        assert set(results["conditions"][cond]) == set(MODELS) == {"av", "v", "center"}
        for model in MODELS:
            for metric in METRICS:
                entry = results["conditions"][cond][model][metric]
                assert set(entry) == {"mean", "std", "per_seed"} and len(entry["per_seed"]) == 2
                assert entry["mean"] == pytest.approx(sum(entry["per_seed"]) / 2)
    assert results["conditions"]["relevant"]["center"]["cc"]["std"] == 0.0  # seed independent
    control = results["controls"]["av_mismatched_audio"]
    assert set(control) == set(CONDITIONS) and len(control["relevant"]["cc"]["per_seed"]) == 2
    assert len(results["claims"]) == 5 and all(isinstance(c["holds"], bool) for c in results["claims"])
    refs = results["references"]  # the generator's own attention model, seed independent
    assert set(refs) == {"visual_ceiling", "oracle", "note"} and "visual_ceiling" in printed
    assert refs["oracle"]["relevant"]["cc"] > refs["visual_ceiling"]["relevant"]["cc"]
    for cond in ("music", "silent"):  # no source: knowing it changes nothing
        assert refs["oracle"][cond] == pytest.approx(refs["visual_ceiling"][cond])
    for seed in (0, 1):
        for key in ("av", "v"):
            assert (out / f"seed{seed}" / key / "checkpoints" / "last.safetensors").is_file()
    # re-running reuses the finished trainings and gives the same numbers
    again = run_audio_relevance(data, out, seeds=2, quick=True)
    assert again["conditions"] == results["conditions"]


def test_experiment_needs_conditions(data: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        run_audio_relevance(tmp_path / "nowhere", tmp_path / "out", quick=True)
    (data / "conditions.json").rename(tmp_path / "conditions.json")
    try:
        with pytest.raises(DatasetError, match="no condition"):
            run_audio_relevance(data, tmp_path / "out", quick=True)
    finally:
        (tmp_path / "conditions.json").rename(data / "conditions.json")
