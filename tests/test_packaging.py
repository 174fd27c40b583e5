"""What the wheel ships: the runtime and its data, not the research code; ``avsal experiment`` says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tomllib
from setuptools import find_namespace_packages

from avsal_deploy.cli import RESEARCH_HINT, main

ROOT = Path(__file__).resolve().parents[1]


def wheel_packages() -> list[str]:
    """The packages setuptools puts in the wheel, found as the build backend finds them
    (``[tool.setuptools.packages.find]``: namespace-aware, include / exclude patterns)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return find_namespace_packages(
        where=str(ROOT), include=find.get("include", ["*"]), exclude=find.get("exclude", [])
    )


def test_wheel_ships_the_runtime_without_research_code() -> None:
    packages = wheel_packages()
    for needed in ("avsal_deploy", "avsal_deploy.engine", "avsal_deploy.serving", "avsal_deploy.training"):
        assert needed in packages
    assert not [p for p in packages if p.startswith("avsal_deploy.research")]
    assert (ROOT / "avsal_deploy" / "research" / "__init__.py").is_file()  # in the source tree


def test_wheel_ships_type_information() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["avsal_deploy"]
    assert (ROOT / "avsal_deploy" / "py.typed").is_file()


def test_experiment_without_the_research_code_says_it_needs_a_checkout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wheel install has no avsal_deploy.research: one line, exit status 2."""
    for name in [m for m in sys.modules if m.startswith("avsal_deploy.research")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "avsal_deploy.research", None)  # import fails as in a wheel
    assert main(["experiment", "audio-relevance", "--data", "d", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"avsal: error: {RESEARCH_HINT}"]


def test_experiment_runs_from_a_source_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "audio-relevance", "--help"])
    assert exit_.value.code == 0
    assert "--grid" in capsys.readouterr().out
