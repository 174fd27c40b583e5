"""The command line's grammar: one name per meaning, help and defaults everywhere, lists one way,
old spellings as hidden aliases, the global options, exit statuses and the generated reference."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from avsal_deploy import __version__
from avsal_deploy.cli import build_parser, main
from avsal_deploy.cli.grammar import DEPRECATED, EXIT_CODES, VOCABULARY, subcommands, visible_options
from avsal_deploy.cli.reference import render
from avsal_deploy.interrupt import EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.fixture(scope="module")
def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(subcommands(parser))


def test_every_command_is_there(commands: dict[str, argparse.ArgumentParser]) -> None:
    for name in (
        "predict",
        "convert",
        "models",
        "export",
        "serve",
        "stream",
        "score",
        "roi",
        "bench",
        "eval",
    ):
        assert name in commands
    assert "experiment audio-relevance" in commands


def test_vocabulary_one_name_per_meaning(commands: dict[str, argparse.ArgumentParser]) -> None:
    """Every option of every command is declared in the vocabulary (one meaning each), no command
    shows an old spelling, and no two declared options are an old and a new name of one meaning."""
    undeclared = {
        (name, option)
        for name, command in commands.items()
        for action in visible_options(command)
        for option in action.option_strings
        if option.startswith("--") and option not in VOCABULARY
    }
    assert not undeclared, f"options outside the vocabulary: {sorted(undeclared)}"
    shown = {o for c in commands.values() for a in visible_options(c) for o in a.option_strings}
    assert not shown & set(DEPRECATED), "an old spelling is visible"
    assert not set(DEPRECATED) & set(VOCABULARY)
    assert set(DEPRECATED.values()) <= set(VOCABULARY)


def test_shared_options_have_one_default_and_one_help(commands: dict[str, argparse.ArgumentParser]) -> None:
    """Options that several commands share mean the same there: same default where the meaning is
    the model's or the prediction's, same help text for the model and prediction options."""
    shared = (
        "--engine",
        "--checkpoint",
        "--export",
        "--steps",
        "--seed",
        "--batch-size",
        "--overlay",
        "--png",
    )
    seen: dict[str, set[tuple[object, str]]] = {o: set() for o in shared}
    for name, command in commands.items():
        if name in ("export", "info", "build-engines", "quantize", "triton-repo", "synthetic"):
            continue  # --export/--steps/--seed/--checkpoint there name an export's own inputs
        for action in visible_options(command):
            for option in action.option_strings:
                if option in seen:
                    seen[option].add((action.default, action.help or ""))
    for option, variants in seen.items():
        assert len({d for d, _ in variants}) <= 1, (option, variants)
    for option in ("--engine", "--steps", "--seed", "--batch-size"):
        assert len({h for _, h in seen[option]}) == 1, (option, seen[option])


def test_every_option_has_help_and_lists_are_repeated_flags(
    commands: dict[str, argparse.ArgumentParser],
) -> None:
    for name, command in commands.items():
        for action in command._actions:
            if action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings or action.dest)
            if action.option_strings:
                assert action.nargs not in ("+", "*"), (name, action.option_strings)
                assert "comma" not in action.help, (name, action.option_strings)


def test_help_states_defaults(commands: dict[str, argparse.ArgumentParser]) -> None:
    text = commands["predict"].format_help()
    assert "(default: 1)" in " ".join(text.split())  # --batch-size
    assert "(default: 0)" in " ".join(text.split())  # --seed


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"avsal {__version__}"


def test_exit_statuses_are_documented(parser: argparse.ArgumentParser) -> None:
    assert set(EXIT_CODES) == {0, 1, 2, EXIT_INTERRUPTED}
    help_text = parser.format_help()
    for code in EXIT_CODES:
        assert f"  {code} " in help_text


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--no-such-option"])
    assert exit_.value.code == 2
    assert main(["predict", "v.mp4", "--engine", "onnxruntime", "--url", "h:1"]) == 2
    assert "--url is for --engine triton" in capsys.readouterr().err
    assert main(["predict", "v.mp4", "--checkpoint", "a", "--export", "b"]) == 2
    assert "not both" in capsys.readouterr().err


def test_global_options_go_before_the_command(parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args(["-q", "score", "videos", "--out", "o"])
    assert args.quiet and not args.verbose
    assert parser.parse_args(["-v", "models"]).verbose
    with pytest.raises(SystemExit):
        parser.parse_args(["-q", "-v", "models"])  # one or the other


def test_old_spellings_still_work_with_one_deprecation_line(
    parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["predict", "v.mp4", "--export-dir", "d"], "export", "d"),
        (["predict", "v.mp4", "--triton-url", "h:1"], "url", "h:1"),
        (["predict", "v.mp4", "--quiet"], "quiet", True),
        (["predict", "v.mp4", "--no-overlay"], "overlay", False),
        (["export", "--out", "o", "--ddim-steps", "4"], "steps", "4"),
        (
            ["export", "--out", "o", "--components", "fusion", "unet_step"],
            "component",
            ["fusion", "unet_step"],
        ),
        (["score", "v", "--out", "o", "--metrics", "cc,nss"], "metric", ["cc", "nss"]),
        (["eval", "c", "d", "--name", "DHF1K"], "dataset", "DHF1K"),
        (["serve", "repo", "--models", "a,b"], "model", ["a", "b"]),
        (["bench", "--report", "r"], "out", "r"),
        (["roi", "v", "--crf", "30", "--out", "o", "--step", "2"], "qp_step", 2.0),
        (["synthetic", "--out", "o", "--rates", "2,3"], "rate", [2.0, 3.0]),
    ]
    for argv, dest, value in cases:
        args = parser.parse_args(argv)
        assert getattr(args, dest) == value, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "deprecated" in err[0], (argv, err)


def test_eval_json_is_a_flag_and_the_old_file_form_is_an_alias(
    parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    from avsal_deploy.cli import _legacy_argv

    args = parser.parse_args(_legacy_argv(["eval", "c.safetensors", "data", "--json", "report.json"]))
    assert args.out == "report.json" and not args.json
    assert "deprecated" in capsys.readouterr().err
    args = parser.parse_args(_legacy_argv(["eval", "c.safetensors", "data", "--json"]))
    assert args.json and args.out is None


def test_serving_defaults(commands: dict[str, argparse.ArgumentParser]) -> None:
    from avsal_deploy.engine.choice import DEFAULT_URLS
    from avsal_deploy.serving.server import DEFAULT_PORTS

    args = commands["serve"].parse_args(["repo"])
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert args.host == "127.0.0.1"
    assert DEFAULT_URLS["triton"] == f"127.0.0.1:{DEFAULT_PORTS.http}"  # a client finds `avsal serve`
    assert commands["stream"].parse_args(["v"]).url == f"127.0.0.1:{DEFAULT_PORTS.grpc}"


def test_server_binds_to_its_host() -> None:
    from avsal_deploy.serving.server import Ports, TritonServer

    server = TritonServer(ROOT, Ports(1, 2, 3), host="0.0.0.0")
    command = server.command(Path("backends"))
    assert "--http-address=0.0.0.0" in command and "--grpc-address=0.0.0.0" in command
    assert server.http_url == "http://127.0.0.1:1"  # reached through loopback on this machine
    assert "--http-address=127.0.0.1" in TritonServer(ROOT, Ports(1, 2, 3)).command(Path("b"))


def test_eval_defaults_to_onnxruntime(commands: dict[str, argparse.ArgumentParser]) -> None:
    from avsal_deploy.cli.grammar import engine_choice

    assert engine_choice(commands["eval"].parse_args(["c", "d"])).backend == "onnxruntime"
    assert engine_choice(commands["eval"].parse_args(["c", "d", "--url", "h:1"])).backend == "triton"


def test_predict_and_score_write_the_same_outputs_by_default(
    commands: dict[str, argparse.ArgumentParser],
) -> None:
    p = commands["predict"].parse_args(["v"])
    s = commands["score"].parse_args(["v", "--out", "o"])
    assert (p.overlay, p.png) == (s.overlay, s.png) == (False, False)


def test_reference_page_is_current() -> None:
    """docs/cli.md is what ``python -m avsal_deploy.cli.reference docs/cli.md`` renders."""
    page = ROOT / "docs" / "cli.md"
    assert page.read_text() == render(), "regenerate: python -m avsal_deploy.cli.reference docs/cli.md"
    for option in ("--url", "--export", "--out", "--json", "--steps", "--batch-size"):
        assert f"`{option}`" in page.read_text()


def test_the_command_line_starts_light() -> None:
    """Building the parser imports no media, engine runtime or torch: `avsal --version`, `--help`
    and a command's signal handlers come before any heavy import."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import avsal_deploy.cli as cli\n"
        "cli.build_parser()\n"
        "heavy = ('av', 'torch', 'onnxruntime', 'avsal_deploy.pipeline', 'avsal_deploy.scoring.core')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
