"""`adamole-bench lm-eval`: lm-eval's own CLI, in a fresh process, gives every export the numbers its trial recorded."""

import json

import pytest

from adamole_bench.harness.evaluate.lm_eval_cli import MODEL_TYPE, _without_default_tasks, only_ours
from adamole_bench.tasks.registry import LM_EVAL_DIR
from adamole_bench.tests.fault_tools import cli_env, run_cli

LIMIT, BATCH = 32, 8  # the trial's eval.limit and eval.batch_size, given to lm-eval as --limit and --batch_size


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """lora and mole trained part-way (so predictions vary by doc), and lora under the reference's --logits
    protocol, exported as LoRA, merged LoRA and mixture; the tiny base as a plain transformers folder
    (what `hf ... peft=` needs). Returns the env, the folders and each trial's (acc, per-doc samples)."""
    import mlflow

    from adamole_bench.harness.model.loading import load_base_model

    root = tmp_path_factory.mktemp("lm-eval-cli")
    env = cli_env(root / "runs")
    common = ["run", "--model", "tiny-llama", "--tasks", "fruit_or_color", "--max-steps", "12", "--limit", str(LIMIT)]
    common += ["train.lr=3e-3", "train.warmup_steps=0", f"eval.batch_size={BATCH}", "reference=false"]
    for sweep in (["--methods", "lora,mole"], ["--methods", "lora", "--protocol", "reference_logits"]):
        result = run_cli([*common, *sweep], env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    client = mlflow.MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    trials = client.search_runs(client.get_experiment_by_name("adamole-bench").experiment_id, "tags.kind = 'trial'")
    runs = {(run.data.tags["method"], run.data.tags["protocol"]): run for run in trials}
    base = load_base_model("tiny-llama")
    base.model.save_pretrained(root / "base")
    base.tokenizer.save_pretrained(root / "base")
    folders = {"base": root / "base"}
    for name, trial, extra in (
        ("lora", ("lora", "letter"), ["--merged"]),
        ("mole", ("mole", "letter"), []),
        ("lora_ref", ("lora", "reference_logits"), []),
    ):
        exported = run_cli(["export", runs[trial].info.run_id, str(root / name), *extra], env)
        assert exported.returncode == 0, exported.stdout + exported.stderr
        folders[name] = root / name
    recorded = {}
    for trial, run in runs.items():
        samples = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/lm_eval/samples.json"))
        recorded[trial] = run.data.metrics["eval/acc"], sorted(samples, key=lambda s: s["doc_id"])
    return env, folders, recorded


def stock_cli(env: dict, cwd, model: str, model_args: str, task: str) -> tuple[float, list[dict], str]:
    """acc, per-doc samples and output of `adamole-bench lm-eval` run from a folder outside any git checkout."""
    out = cwd / "lm-eval-out"
    args = ["lm-eval", "--model", model, "--model_args", model_args, "--tasks", task, "--limit", str(LIMIT), "--batch_size", str(BATCH)]
    result = run_cli([*args, "--output_path", str(out), "--log_samples", "--device", "cpu"], env, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    (results,) = out.rglob("results_*.json")
    (samples,) = out.rglob(f"samples_{task}_*.jsonl")
    per_doc = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])
    return json.loads(results.read_text())["results"][task]["acc,none"], per_doc, result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    "method, protocol, model, model_args",
    [
        ("lora", "letter", MODEL_TYPE, "pretrained={lora}"),  # the adapter on its embedded base
        ("lora", "letter", "hf", "pretrained={lora}/merged"),  # stock HFLM on the merged folder
        ("mole", "letter", MODEL_TYPE, "pretrained={mole}"),  # a mixture: registered with PEFT before lm-eval loads it
        ("mole", "letter", "hf", "pretrained={base},peft={mole}"),  # stock HFLM and PEFT loading the mixture
        ("lora", "reference_logits", MODEL_TYPE, "pretrained={lora_ref},protocol=reference_logits"),  # the reference's token rules
    ],
)
def test_the_stock_cli_scores_every_export_as_its_trial_did(exports, tmp_path, method, protocol, model, model_args):
    env, folders, recorded = exports
    acc, samples, output = stock_cli(env, tmp_path, model, model_args.format(**folders), f"fruit_or_color_{protocol}")
    expected_acc, expected = recorded[method, protocol]
    assert [s["acc"] for s in samples] == [s["acc"] for s in expected] and acc == expected_acc and len(samples) == LIMIT
    assert 0 < sum(s["acc"] for s in samples) < LIMIT  # the docs disagree, so equal lists say something
    logliks = [[float(choice[0]) for choice in s["filtered_resps"]] for s in samples]
    differences = [abs(a - b) for got, want in zip(logliks, expected) for a, b in zip(got, want["loglikelihoods"], strict=True)]
    # Our model type runs the trial's own scorer on the same batches: the very same floats. Stock HFLM
    # computes the full output head (on merged weights for LoRA): GEMM rounding apart (as in tests/test_scoring.py).
    assert max(differences) == 0.0 if model == MODEL_TYPE else max(differences) < 1e-5
    assert "fatal:" not in output  # lm-eval's `git describe` probe, run outside a checkout
    assert "it/s" not in output and "\r" not in output  # no progress bars in captured output
    assert "Custom kwargs can be passed" not in output and "is not of type `str`" not in output  # warnings that do not apply


def test_only_our_tasks_skip_lm_evals_own_index():
    import lm_eval.tasks

    assert only_ours(["copa_letter,boolq_cloze"]) and only_ours(["copa_*", "fruit_or_color_generate"])
    assert not only_ours(["copa_letter,hellaswag"]) and not only_ours(None) and not only_ours(["copa"])
    with _without_default_tasks():
        indexed = set(lm_eval.tasks.TaskManager(include_path=str(LM_EVAL_DIR)).all_tasks)
    assert "copa_letter" in indexed and "boolq_reference_generate" in indexed and "hellaswag" not in indexed


@pytest.mark.integration
def test_help_names_the_task_names_and_the_export_model(tmp_path):
    result = run_cli(["lm-eval", "--help"], cli_env(tmp_path / "runs"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "<task>_<protocol>" in result.stdout and f"--model {MODEL_TYPE}" in result.stdout and str(LM_EVAL_DIR) in result.stdout
    assert "--model_args" in result.stdout and "--include_path" in result.stdout  # lm-eval's own options follow


@pytest.mark.integration
def test_an_unknown_task_is_one_line_naming_the_fix_and_exit_2(tmp_path):
    result = run_cli(["lm-eval", "--model", MODEL_TYPE, "--model_args", "pretrained=tiny-llama", "--tasks", "copa_leter"], cli_env(tmp_path / "runs"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Tasks not found: copa_leter; ours are <task>_<protocol>: a task of `adamole-bench list tasks` and one of "
        "letter, cloze, generate, reference_logits, reference_generate, e.g. copa_letter"
    )
    assert "Traceback" not in result.stderr and "Initializing" not in result.stderr  # before any model is loaded
