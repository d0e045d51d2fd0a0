"""What users bring from other tools works: -h, --version, shell completion, help without arguments,
PEFT / HF TrainingArguments names for our settings, YAML 1.1 numbers, and output that stays clean in a
file or CI log (no progress bars, no colour codes)."""

import os
import re
import subprocess
import sys

import pytest

from adamole_bench.base.errors import UserError
from adamole_bench.harness.settings.config import config_hash, to_dict, trial_config
from adamole_bench.harness.settings.load import load_config
from adamole_bench.tests.fault_tools import cli_env

ANSI = re.compile(r"\x1b\[")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adamole_bench.cli", *args], capture_output=True, text=True, timeout=600, env=env)


# --- command line -------------------------------------------------------------------------------


def test_no_arguments_prints_help_and_succeeds():
    result = _cli()
    assert result.returncode == 0, result.stderr
    assert "Usage: adamole-bench" in result.stdout and "run" in result.stdout and "report" in result.stdout


def test_short_help_version_and_completion():
    for args in (["-h"], ["run", "-h"], ["report", "-h"]):
        result = _cli(*args)
        assert result.returncode == 0 and "Usage: adamole-bench" in result.stdout, (args, result.stderr)
    from adamole_bench import __version__

    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"adamole-bench {__version__}"
    script = _cli("--show-completion", "bash")
    assert script.returncode == 0 and "_ADAMOLE_BENCH_COMPLETE=complete_bash" in script.stdout
    assert "--install-completion" in _cli("-h").stdout


def _complete(words: str) -> list[str]:
    """What bash completion offers for the last word of `words` (the protocol the installed script speaks)."""
    env = {**os.environ, "_ADAMOLE_BENCH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    result = subprocess.run([sys.executable, "-m", "adamole_bench.cli"], env=env, capture_output=True, text=True, timeout=120)
    return result.stdout.split()


def test_completion_offers_commands_and_values():
    assert _complete("adamole-bench rep") == ["report"]
    assert _complete("adamole-bench run --tasks copa,bo") == ["copa,boolq"]
    assert _complete("adamole-bench list m") == ["methods", "models"]
    assert _complete("adamole-bench report --format cs") == ["csv"]


# --- names from PEFT and TrainingArguments --------------------------------------------------------


def _hash(*overrides: str, config=None) -> str:
    return config_hash(trial_config(load_config(config, list(overrides), model="tiny-llama", methods=["lora"]), "lora", "copa"))


def test_peft_and_trainer_names_set_our_settings_and_leave_the_hash_unchanged(tmp_path):
    ours = _hash(
        "train.lr=1e-4",
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.epochs=2",
        "eval.batch_size=8",
        "lora.rank=16",
        "lora.alpha=8",
        "lora.dropout=0.1",
    )
    theirs = ("learning_rate=1e-4", "per_device_train_batch_size=4", "gradient_accumulation_steps=2", "num_train_epochs=2",
              "per_device_eval_batch_size=8", "lora.r=16", "lora.lora_alpha=8", "lora.lora_dropout=0.1")  # fmt: skip
    assert _hash(*theirs) == ours
    assert _hash("train.learning_rate=1e-4", "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2", "train.num_train_epochs=2",
                 "eval.per_device_eval_batch_size=8", "lora.r=16", "lora.lora_alpha=8", "lora.lora_dropout=0.1") == ours  # fmt: skip
    yaml = tmp_path / "hf.yaml"
    yaml.write_text("learning_rate: 1e-4\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 2\nnum_train_epochs: 2\n"
                    "per_device_eval_batch_size: 8\nlora: {r: 16, lora_alpha: 8, lora_dropout: 0.1}\n")  # fmt: skip
    assert _hash(config=yaml) == ours
    assert ours != _hash(
        "train.lr=2e-4",
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.epochs=2",
        "eval.batch_size=8",
        "lora.rank=16",
        "lora.alpha=8",
        "lora.dropout=0.1",
    )
    # The alias is recorded nowhere: the resolved config holds our names only.
    recorded = str(to_dict(load_config(yaml, model="tiny-llama", methods=["lora"])))
    assert not any(name in recorded for name in ("learning_rate", "per_device", "gradient_accumulation", "num_train_epochs", "lora_alpha", "'r'"))


def test_an_alias_and_its_setting_together_are_refused():
    with pytest.raises(UserError, match="set the same setting; keep one"):
        load_config(None, ["train={lr: 1e-3, learning_rate: 1e-4}"])
    with pytest.raises(UserError, match=r"both set lora\.rank; keep one"):
        load_config(None, ["lora={r: 8, rank: 16}"])


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.learnin_rate=1", "(did you mean 'train.lr'?)"),  # a misspelt alias: our name, never train.max_length
        ("train.max_lenght=3", "(did you mean 'train.max_length'?)"),
        ("learnin_rate=1e-4", "(did you mean 'learning_rate'?)"),  # a top-level alias misspelt: the alias as it is valid there
        ("gradient_acumulation_steps=2", "(did you mean 'gradient_accumulation_steps'?)"),
        ("lr=1e-4", "(did you mean 'train.lr'?)"),
        ("eval.lr=1e-4", "(did you mean 'train.lr'?)"),
        ("train.limit=4", "(did you mean 'eval.limit'?)"),
        ("batch_size=4", "(did you mean 'train.batch_size' or 'eval.batch_size'?)"),
        ("lora_alpha=16", "lora_alpha is a method option here, <method>.alpha, e.g. lora.alpha=16"),
        ("r=8", "r is a method option here, <method>.rank, e.g. lora.rank=8"),
        ("lora.learning_rate=1e-4", "'lora.learning_rate' is not a lora option but a run setting: use train.lr=..."),
    ],
)
def test_unknown_names_get_the_right_suggestion(override, suggestion):
    with pytest.raises(UserError) as raised:
        load_config(None, [override])
    assert suggestion in str(raised.value)
    assert "\n" not in str(raised.value)


def test_yaml_11_exponents_are_read_as_numbers_or_refused(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-4` (no dot) as the string "1e-4"; nothing keeps it as one."""
    yaml = tmp_path / "exp.yaml"
    yaml.write_text("train: {lr: 1e-4, weight_decay: 1e-2}\nmethod_options: {lora: {alpha: 1e1}}\nadamole: {aux_loss_coeff: 1e-3}\n")
    config = load_config(yaml, model="tiny-llama", methods=["lora", "adamole"])
    assert config.train.lr == 1e-4 and config.train.weight_decay == 1e-2
    assert config.method_options == {"lora": {"alpha": 10.0}, "adamole": {"aux_loss_coeff": 1e-3}}
    assert isinstance(to_dict(config)["method_options"]["lora"]["alpha"], float)  # what config/experiment.json records
    assert _hash("train.lr=1e-4", "lora.alpha=10") == _hash(config=_write(tmp_path, "train: {lr: 1e-4}\nlora: {alpha: 1e1}\n"))
    yaml.write_text("eval: {limit: 1e-4}\n")
    with pytest.raises(UserError, match=r"invalid value '1e-4' for 'eval.limit': expected int"):
        load_config(yaml)


def _write(folder, text: str):
    path = folder / "more.yaml"
    path.write_text(text)
    return path


def test_report_output_that_is_a_file_is_one_line(cli, runs_dir, tmp_path):
    target = tmp_path / "report.md"
    target.write_text("")
    for output, why in ((target, "is not a folder"), (target / "sub", f"is not a folder (its parent {target} is a file)")):
        result = cli("report", "--output", output)
        assert result.exit_code == 2 and why in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


# --- output in a file, a CI log and a terminal -----------------------------------------------------

SWEEP = ["run", "--model", "tiny-llama", "--methods", "lora,mole", "--tasks", "fruit_or_color", "--limit", "8", "save_adapters=false"]
PROGRESS = re.compile(r"\r|it/s|\d+%\||trials done|steps · loss")  # tqdm fragments, our live bars


def _markdown_table(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip("\x1b[0123456789;m").startswith("|")]


@pytest.mark.integration
@pytest.mark.parametrize("force_color", [False, True], ids=["file", "FORCE_COLOR-log"])
def test_output_redirected_to_a_file_has_no_progress_bars_or_colour_codes(tmp_path, force_color):
    """stdout and stderr to files, as `run > log 2>&1` or a CI runner (which often sets FORCE_COLOR)."""
    env = cli_env(tmp_path / "runs", **({"FORCE_COLOR": "1"} if force_color else {}))
    if not force_color:
        env.pop("FORCE_COLOR", None)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        code = subprocess.run(
            [sys.executable, "-m", "adamole_bench.cli", *SWEEP, "--max-steps", "3"], env=env, stdout=out, stderr=err, timeout=600
        ).returncode
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert code == 0, stdout + stderr
    assert not PROGRESS.search(stdout + stderr), PROGRESS.search(stdout + stderr)
    assert "is_gradient_checkpointing" not in stderr and stderr.strip() == "", stderr
    table = _markdown_table(stdout)
    assert table[:2] == ["| method | fruit_or_color |", "|---|---:|"] and len(table) == 6, table
    assert not any(ANSI.search(line) for line in table), table
    plain = re.sub(r"\x1b\[[\d;]*m", "", stdout)  # FORCE_COLOR's colours are fine outside the Markdown table
    for trial in ("base", "lora", "mole"):  # one plain line per trial, with its result
        assert re.search(rf"\[\d/3\] {trial}/fruit_or_color/seed0 \n?\s*done acc", plain), plain
    if not force_color:
        assert not ANSI.search(stdout + stderr)


@pytest.mark.integration
def test_a_terminal_shows_the_sweep_line_above_the_trial_bar(tmp_path):
    """Under a real pseudo-terminal: trials done/left and an ETA, the training bar below; no tqdm bars."""
    command = " ".join([sys.executable, "-m", "adamole_bench.cli", *SWEEP, "--max-steps", "60", "--seeds", "0,1"])
    env = {**cli_env(tmp_path / "runs"), "COLUMNS": "140", "TERM": "xterm"}
    env.pop("FORCE_COLOR", None)
    screen = subprocess.run(["script", "-qec", command, "/dev/null"], env=env, capture_output=True, text=True, timeout=600)
    assert screen.returncode == 0, screen.stdout
    text = re.sub(r"\x1b\[[\d;?]*[A-Za-z]", "", screen.stdout)
    assert re.search(r"sweep\s+\S+\s+\d/5 trials done, \d left · ETA (\d:\d\d:\d\d|after the first trial)", text), text
    assert re.search(r"train\s+\S+\s+\d+/60 steps · loss \d+\.\d{4}", text), text
    assert "it/s" not in text and "%|" not in text  # lm-eval's own bars stay off
    for header in ("[1/5] base/fruit_or_color/seed0", "[5/5] mole/fruit_or_color/seed1"):  # whole lines, not erased by a redraw
        assert header in text
