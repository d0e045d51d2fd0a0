"""What a Typer user expects of `--help` and the shell: fixed choices shown and completed, defaults
shown (and equal to the settings' own), flags without a value placeholder, and `list` in a pipe one
row per line."""

import os
import subprocess
import sys
import typing

import pytest
from typer.testing import CliRunner

from adamole_bench import cli as commands
from adamole_bench.harness.report.render import FORMATS
from adamole_bench.harness.run.sweep import EXECUTORS
from adamole_bench.harness.settings.config import EvalConfig, ExperimentConfig, TrainConfig


def _help(command: str) -> str:
    result = CliRunner().invoke(commands.app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def _line(text: str, flag: str) -> str:
    return next(line for line in text.splitlines() if f" {flag} " in line)


def test_the_choices_shown_are_the_harness_choices():
    assert typing.get_args(typing.get_type_hints(EvalConfig)["protocol"]) == commands.PROTOCOLS
    assert typing.get_args(typing.get_type_hints(ExperimentConfig)["precision"]) == commands.PRECISIONS
    assert (commands.EXECUTORS, commands.REPORT_FORMATS) == (EXECUTORS, FORMATS)


@pytest.mark.parametrize(
    ("command", "flag", "choices"),
    [
        ("run", "--protocol", commands.PROTOCOLS),
        ("run", "--precision", commands.PRECISIONS),
        ("run", "--executor", commands.EXECUTORS),
        ("report", "--format", FORMATS),
    ],
)
def test_fixed_choices_are_shown_in_help(command, flag, choices):
    assert "|".join(choices) in _line(_help(command), flag)


def test_defaults_in_run_help_are_the_settings_defaults():
    text = _help("run")
    train, evaluation, experiment = TrainConfig(), EvalConfig(), ExperimentConfig()
    shown = {
        "--max-steps": train.max_steps,
        "--limit": evaluation.limit,
        "--protocol": evaluation.protocol,
        "--seeds": ",".join(map(str, experiment.seeds)),
        "--model": experiment.model,
        "--device": experiment.device,
        "--precision": experiment.precision,
        "--executor": "local",
    }
    for flag, value in shown.items():
        assert f"[default: {value}]" in " ".join(_line(text, flag).split()), flag


def test_bracketed_defaults_are_not_swallowed_as_markup():
    assert "[default: results/published.yaml]" in _help("report")
    assert "[default: results/ci-smoke.yaml]" in _help("check")


@pytest.mark.parametrize("command", ["run", "bench", "report", "compare", "check", "export"])
def test_flags_take_no_value_placeholder(command):
    placeholders = [line for line in _help(command).splitlines() if "<bool>" in line]
    assert all("--help" in line for line in placeholders), placeholders  # Typer's own --help keeps its placeholder


def _complete(*words: str) -> list[str]:
    """What bash completion offers for the last word, through Click's real completion protocol."""
    env = {**os.environ, "_ADAMOLE_BENCH_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(["adamole-bench", *words]), "COMP_CWORD": str(len(words))}
    done = subprocess.run([sys.executable, "-m", "adamole_bench.cli"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.integration  # each completion is a fresh process; setting keys import torch
def test_shell_completion_of_choices_methods_and_setting_keys():
    assert _complete("report", "--format", "ma") == ["markdown"]
    assert _complete("run", "--precision", "b") == ["bf16"]
    assert _complete("list", "t") == ["tasks"]
    assert _complete("run", "--methods", "lora,ada") == ["lora,adamole"]
    assert "train.lr=" in _complete("run", "train.l") and "adamole.num_experts=" in _complete("run", "adamole.num")


def test_list_in_a_pipe_keeps_one_row_per_line(cli):
    result = cli("list", "methods")  # CliRunner's output is no terminal, as a pipe is not
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    from adamole_bench.methods.registry import all_methods

    assert len(rows) == len(all_methods())  # not folded at 80 columns into several lines per method
