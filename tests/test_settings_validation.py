"""Settings are checked before any work (issue 25): an out-of-range, non-finite or empty value, or a
filter the MLflow store cannot search by, is one line naming the fix and exit code 2, through the
real CLI. Nothing runs first: no trial, no model load, no store (a fast test is part of the point)."""

import pytest
import yaml

from adamole_bench.base.paths import package_root

RUN = ("run", "--model", "tiny-llama", "--tasks", "fruit_or_color")
FIX = ("e.g.", "leave", "use ", "pass ", "name ", "must be", "expected ", "did you mean")  # every message says what to do instead


@pytest.fixture
def nothing_runs(runs_dir, monkeypatch):
    """Every place work starts (a sweep, the bench, a store, the UI server, an export) raises instead:
    a value that slips past validation fails the test at once rather than running a trial."""
    from adamole_bench.harness.bench import suite as bench
    from adamole_bench.harness.check import regression
    from adamole_bench.harness.report import export
    from adamole_bench.harness.run import sweep
    from adamole_bench.harness.store import liveness, tracking

    started = []

    def refuse(name):
        def started_work(*args, **kwargs):
            started.append(name)
            raise AssertionError(f"work started ({name}) before the settings were refused")

        return started_work

    for module, name in (
        (sweep, "run_sweep"),
        (bench, "run_bench"),
        (tracking, "Tracker"),
        (regression, "Tracker"),
        (liveness, "run_supervised"),
        (export, "export_run"),
    ):
        monkeypatch.setattr(module, name, refuse(f"{module.__name__.rpartition('.')[2]}.{name}"))
    yield started
    assert not started
    assert not runs_dir.exists(), "an MLflow store was created"


def refused(cli, args, expected: str):
    result = cli(*args)
    output = result.output.strip()
    assert result.exit_code == 2, f"exit {result.exit_code}: {output} {result.exception!r}"
    assert "\n" not in output and output.startswith("error: "), output
    assert expected in output, output
    assert any(hint in output for hint in FIX), output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # empty items of comma lists
        (
            ("--methods", "lora,,mole"),
            "--methods 'lora,,mole' has an empty item (item 2); separate items with single commas and no trailing comma, e.g. --methods lora,mole",
        ),
        (("--methods", ","), "--methods is empty (an unset shell variable?)"),
        (("--tasks", "copa,"), "--tasks 'copa,' has an empty item (item 2)"),
        (("--seeds", "0,,1"), "--seeds '0,,1' has an empty item (item 2)"),
        (("--seeds", " "), "--seeds is empty"),
        (("seeds=0,,1",), "'seeds' has an empty item (item 2 of '0,,1')"),
        (("methods=lora,,mole",), "'methods' has an empty item"),
        (
            ("lora.target_modules=q_proj,,v_proj",),
            "'lora.target_modules=q_proj,,v_proj' has an empty item (item 2); separate items with single commas and no trailing comma, e.g. lora.target_modules=q_proj,v_proj",
        ),
        (("lora.target_modules=q_proj,",), "has an empty item (item 2)"),
        (("--methods", "soft-moa", "soft-moa.lora_targets=q_proj,,v_proj"), "'soft-moa.lora_targets=q_proj,,v_proj' has an empty item"),
        (("train.lr=1e-4,,1e-3",), "has an empty grid value (value 2)"),
        # seeds the RNGs reject (numpy takes 0 ..= 2**32 - 1)
        (("--seeds", "-1"), "seed -1 is out of range: seeds must be in [0, 4294967295]"),
        (("--seeds", "4294967296"), "seed 4294967296 is out of range"),
        (("--seeds", "0,1.5"), "--seeds takes comma-separated integers"),
        # non-finite numbers (YAML reads nan, .nan, inf; 1e400 overflows to inf)
        (("train.lr=nan",), "train.lr must be a finite number, got nan; e.g. train.lr=0.0005"),
        (("train.lr=inf",), "train.lr must be a finite number, got inf"),
        (("train.lr=-inf",), "train.lr must be a finite number, got -inf"),
        (("train.lr=.nan",), "train.lr must be a finite number, got nan"),
        (("train.lr=1e400",), "train.lr must be a finite number, got inf"),
        (("train.epochs=nan",), "train.epochs must be a finite number"),
        (("train.max_grad_norm=inf",), "train.max_grad_norm must be a finite number"),
        (("train.weight_decay=nan",), "train.weight_decay must be a finite number"),
        (("resources.gpus_per_trial=nan",), "resources.gpus_per_trial must be a finite number"),
        (("resources.cpus_per_trial=inf",), "resources.cpus_per_trial must be a finite number"),
        (("lora.alpha=nan",), "invalid lora option: alpha must be a finite number, got nan; e.g. lora.alpha=16.0"),
        (("lora.dropout=inf",), "invalid lora option: dropout must be a finite number"),
        (("--methods", "adamole", "adamole.max_threshold=nan"), "invalid adamole option: max_threshold must be a finite number, got nan"),
        (("--methods", "mole", "mole.threshold=nan"), "invalid mole option: threshold must be a finite number"),
        (("--methods", "mole", "mole.aux_loss_coeff=inf"), "invalid mole option: aux_loss_coeff must be a finite number"),
        (("--methods", "sparse-moa", "sparse-moa.max_threshold=nan"), "invalid sparse-moa option: max_threshold must be a finite number"),
        # out of range for the optimizer, the scheduler or a DataLoader
        (("train.lr=0",), "train.lr must be > 0, got 0.0; e.g. train.lr=0.0005"),
        (("train.max_grad_norm=-1",), "train.max_grad_norm must be > 0, got -1.0"),
        (("train.epochs=0",), "train.epochs must be > 0"),
        (("train.warmup_steps=-1",), "train.warmup_steps must be >= 0, got -1; e.g. train.warmup_steps=4"),
        (("train.weight_decay=-0.1",), "train.weight_decay must be >= 0, got -0.1"),
        (("train.grad_accum=0",), "train.grad_accum must be > 0, got 0; e.g. train.grad_accum=1"),
        (("train.batch_size=0",), "train.batch_size must be > 0"),
        (("train.max_length=0",), "train.max_length must be >= 2"),
        (("train.max_length=1",), "train.max_length must be >= 2 (a token to predict from and one to predict), got 1"),  # was a diverged trial
        (("train.max_train_examples=0",), "train.max_train_examples must be >= 1 (or unset for every example of the train split)"),
        (("train.max_steps=1.5",), "invalid value 1.5 for 'train.max_steps': expected int"),
        (("--max-steps", "-1"), "train.max_steps must be >= 0, got -1"),
        (("--limit", "0"), "eval.limit must be >= 1 (or unset for the whole eval split), got 0"),
        (("--limit", "-1"), "eval.limit must be >= 1"),
        (("eval.limit=0",), "eval.limit must be >= 1"),
        (("eval.batch_size=0",), "eval.batch_size must be > 0, got 0; e.g. eval.batch_size=8"),
        (("resources.cpus_per_trial=0",), "resources.cpus_per_trial must be > 0, got 0.0"),
        (("resources.gpus_per_trial=-1",), "resources.gpus_per_trial must be >= 0"),
        (("resources.max_retries=-1",), "resources.max_retries must be >= 0, got -1; e.g. resources.max_retries=2"),
        (("resources.workers_per_trial=0",), "resources.workers_per_trial must be > 0, got 0; e.g. resources.workers_per_trial=1"),
        (("resources.workers_per_trial=1.5",), "invalid value 1.5 for 'resources.workers_per_trial': expected int"),
        (
            ("resources.workers_per_trial=2", "resources.gpus_per_trial=0.5", "--executor", "ray"),
            "resources.workers_per_trial=2 with resources.gpus_per_trial=0.5: NCCL needs a whole GPU per worker",
        ),
        (
            ("resources.workers_per_trial=2",),
            "resources.workers_per_trial=2 trains each trial on 2 Ray workers: add --executor ray (or leave the setting out and launch with "
            "torchrun --nproc_per_node 2",
        ),
        (("resources.custom.ssd=0",), "resources.custom.ssd=0.0: a custom resource needs a name other than CPU, GPU and memory and an amount > 0"),
        (("resources.custom.ssd=nan",), "resources.custom.ssd=nan: a custom resource needs"),
        (("resources.custom.GPU=1",), "resources.custom.GPU=1.0: a custom resource needs a name other than CPU, GPU and memory"),
        (("resources.custom.ssd=x",), "invalid value 'x' for 'resources.custom.ssd': expected float"),
        (("resources.custom=3",), "invalid value 3 for 'resources.custom': expected a mapping, e.g. resources.custom.NAME=1"),
        (("resources.accelerator_type=A100",), "resources.accelerator_type='A100' picks a GPU type, so it needs resources.gpus_per_trial > 0"),
        (("lora.rank=0",), "invalid lora option: rank must be >= 1, got 0"),
        (("--methods", "adamole", "adamole.num_experts=0"), "invalid adamole option: num_experts must be >= 1"),
        (("--methods", "mole", "mole.top_k=0"), "invalid mole option: top_k must be in [1, num_experts=8]"),
        # a grid point is checked like a plain value
        (("train.lr=0,1e-4",), "grid point train.lr=0: train.lr must be > 0"),
        (("train.lr=nan,1e-4",), "grid point train.lr=nan: train.lr must be a finite number"),
        (("--methods", "adamole", "adamole.max_threshold=nan,0.1"), "grid point adamole.max_threshold=nan: invalid adamole option"),
        # `key=` with nothing after it
        (("train.lr=",), "'train.lr' needs a value (got none, e.g. 'train.lr=' with nothing after it); e.g. train.lr=0.0005, or leave it out"),
        (("lora.rank=",), "'lora.rank' needs a value (got none, e.g. 'lora.rank=' with nothing after it); e.g. lora.rank=32, or leave it out"),
        (("lora.alpha=",), "'lora.alpha' needs a value"),
        (
            ("--methods", "soft-moa", "soft-moa.lora_targets="),
            "'soft-moa.lora_targets' needs a value (got none, e.g. 'soft-moa.lora_targets=' with nothing after it); e.g. soft-moa.lora_targets=q_proj,k_proj,v_proj,o_proj,down_proj",
        ),
        (("experiment=",), "'experiment' needs a value"),
        (("model=",), "'model' needs a value"),
        # shards
        (("--shard", "2/2"), "invalid shard 2/2: use i/n with 0 <= i < n, e.g. --shard 0/2"),
        (("--shard", "0/0"), "invalid shard 0/0"),
        (("--shard", "-1/2"), "invalid shard -1/2"),
        (("--shard", "1/2/3"), "--shard takes i/n, e.g. 0/2 (got '1/2/3')"),
        # a model name the MLflow store is searched by
        (("--model", "it's"), "model \"it's\" contains a single quote ('), which MLflow run searches cannot match"),
        (("--model", " "), "--model is empty (an unset shell variable?)"),
    ],
)
def test_run_refuses_bad_settings_before_any_work(cli, nothing_runs, args, expected):
    refused(cli, (*RUN, *args), expected)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"train": {"lr": float("nan")}}, "train.lr must be a finite number"),
        ({"train": {"epochs": float("inf")}}, "train.epochs must be a finite number"),
        ({"seeds": [0, -1]}, "seed -1 is out of range"),
        ({"seeds": [0, None]}, "'seeds' has an empty item"),
        ({"methods": ["lora", ""]}, "'methods' has an empty item"),
        ({"lora": {"rank": None}}, "'lora.rank' needs a value"),
        ({"lora": {"target_modules": ["q_proj", None]}}, "'lora.target_modules' has an empty item"),
        ({"resources": {"max_retries": -1}}, "resources.max_retries must be >= 0"),
        ({"model": "it's"}, "contains a single quote"),
    ],
)
def test_a_config_file_is_checked_the_same_way(cli, nothing_runs, tmp_path, settings, expected):
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"model": "tiny-llama", "tasks": ["fruit_or_color"], **settings}))
    refused(cli, ("run", "--config", config), expected)


def test_a_slurm_array_that_maps_to_no_slice_asks_for_shard(cli, nothing_runs, monkeypatch):
    """--array=1,4,9 numbers its tasks 1, 4, 9: task 9 is no slice i/3, so --shard must say which."""
    for name, value in (("SLURM_ARRAY_TASK_ID", "9"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "3")):
        monkeypatch.setenv(name, value)
    refused(cli, RUN, "pass --shard i/n explicitly")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("report", "--model", "it's"), '--model "it\'s" contains a single quote'),
        (("report", "--model", ""), "--model is empty (an unset shell variable?); name one, e.g. --model smollm2-135m"),  # was: every model
        (("report", "--sensitivity", "lora.rank", "--model", "it's"), "contains a single quote"),
        (("report", "--methods", "lora,,mole"), "--methods 'lora,,mole' has an empty item"),
        (("report", "--tasks", ","), "--tasks is empty"),
        (("report", "--config-hash", "ab,"), "--config-hash 'ab,' has an empty item"),
        (("report", "--experiment", ""), "--experiment is empty"),  # was: MlflowException, exit 1
        (("report", "--sensitivity", " "), "--sensitivity is empty"),
        (("compare", "lora", "mole", "--model", "it's"), "contains a single quote"),
        (("compare", "lora", "mole", "--model", " "), "--model is empty"),
        (("compare", "lora", "mole", "--tasks", "copa,"), "--tasks 'copa,' has an empty item"),
        (("compare", "lora", "mole", "--config-hash", "a,,b"), "--config-hash 'a,,b' has an empty item"),
        (("compare", "lora", "mole", "--experiment", ""), "--experiment is empty"),
        (("compare", "", "mole"), "has an empty item (item 1)"),
        (("export", "it's", "out"), "'it's' is neither an MLflow run id"),
        (("export", "", "out"), "'' is neither an MLflow run id"),
        (("export", "run%", "out"), "is neither an MLflow run id"),
        (("bench", "--steps", "0"), "--steps must be >= 1, got 0; e.g. --steps 10"),
        (("bench", "--batch-size", "0"), "--batch-size must be >= 1"),
        (("bench", "--seq-len", "1"), "--seq-len must be >= 2"),
        (("bench", "--threads", "-1"), "--threads must be >= 1, got -1"),
        (("bench", "--threads", "0"), "--threads must be >= 1"),
        (("bench", "--eval-limit", "0"), "--eval-limit must be >= 1"),
        (("bench", "--methods", "lora,,mole"), "--methods 'lora,,mole' has an empty item"),
        (("bench", "--precisions", "fp32,"), "--precisions 'fp32,' has an empty item"),
        (("bench", "lora.rank=nan"), "invalid value 'nan' for 'lora.rank': expected int"),
        (("bench", "lora.alpha=nan"), "invalid lora option: alpha must be a finite number"),
        (("bench", "lora.rank="), "'lora.rank' needs a value"),
        (("bench", "lora.target_modules=q_proj,,v_proj"), "'lora.target_modules' has an empty item"),
        (("bench", "--experiment", ""), "--experiment is empty"),  # was: a crash after the whole bench
        (("bench", "--eval-task", ""), "--eval-task is empty"),  # was: the eval comparison silently skipped
        (("bench", "--eval-task", "copaa"), "unknown task 'copaa' (did you mean 'copa'?)"),  # was: refused after the timed steps
        (("bench", "--output", "no/such/folder/bench.json"), "is in a folder that does not exist"),
        (("ui", "--port", "0"), "--port must be in [1, 65535], got 0; e.g. --port 5000"),
        (("ui", "--port", "65536"), "--port must be in [1, 65535]"),
        (("ui", "--experiment", ""), "--experiment is empty"),
        (("ui", "--sweep", "3f2a9c1b0d4e4f6a8b7c6d5e4f3a2b1c"), "does not exist yet; run a sweep first, or leave --sweep out"),
    ],
)
def test_other_commands_refuse_bad_values_before_any_work(cli, nothing_runs, args, expected):
    refused(cli, args, expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=it's"], "contains a single quote"),
        (["train.lr=nan"], "train.lr must be a finite number"),
        (["lora.target_modules=q_proj,,v_proj"], "has an empty item"),
    ],
)
@pytest.mark.parametrize("from_mlflow", [False, True])
def test_check_validates_its_suite_before_rerunning_or_reading(cli, nothing_runs, tmp_path, overrides, expected, from_mlflow):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"config": str(package_root() / "configs" / "smoke.yaml"), "overrides": overrides, "records": []}))
    refused(cli, ("check", "--suite", suite, *(["--from-mlflow"] if from_mlflow else [])), expected)


def test_filters_with_quotes_or_wildcards_never_break_a_store_query(cli, runs_dir):
    """`tags.model = '...'` matches literally: % and _ are no wildcards, a double quote or a backslash
    needs nothing; --where and --config-hash are matched in Python, so their quotes cannot reach a query."""
    from adamole_bench.harness.report.results import rows_from_mlflow
    from adamole_bench.harness.store.tracking import Tracker

    tracker = Tracker("adamole-bench")
    for model in ("tiny-llama", 'odd"name\\x', "50%_off"):
        run_id = tracker.client.create_run(
            tracker.experiment_id, tags={"kind": "trial", "model": model, "method": "lora", "task": "copa", "seed": "0", "config_hash": model}
        ).info.run_id
        tracker.client.log_metric(run_id, "eval/acc", 0.5)
        tracker.client.set_terminated(run_id, "FINISHED")
    for query, found in (
        ("tiny-llama", ["tiny-llama"]),
        ("tiny%", []),
        ("tiny_llama", []),
        ("%", []),
        ('odd"name\\x', ['odd"name\\x']),
        ("50%_off", ["50%_off"]),
    ):
        assert [row["model"] for row in rows_from_mlflow(tracker, model=query)] == found, query
    for args in (("--model", "tiny%"), ("--model", 'odd"nam'), ("--where", "train.lr='3e-3'"), ("--config-hash", "ab'c")):
        result = cli("report", *args)
        output = result.output.strip()
        assert result.exit_code == 2 and "\n" not in output, output
        assert "Invalid clause" not in output and "Traceback" not in output, output


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("torch_threads", -1, "torch_threads must be a whole number >= 1"),
        ("torch_threads", 1.5, "torch_threads must be a whole number >= 1"),
        ("default_tolerance", "abc", "default_tolerance must be a finite number >= 0"),
        ("default_tolerance", float("nan"), "default_tolerance must be a finite number >= 0"),  # nan would pass every comparison: the gate off
        ("loss_tolerance", -0.1, "loss_tolerance must be a finite number >= 0"),
    ],
)
def test_a_suite_file_with_a_bad_number_is_refused_before_the_rerun(cli, nothing_runs, tmp_path, field, value, expected):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"config": str(package_root() / "configs" / "smoke.yaml"), field: value, "records": []}))
    refused(cli, ("check", "--suite", suite), expected)


def test_errors_go_to_stderr_so_redirected_output_stays_clean(runs_dir):
    """`report --format json > out.json` with a bad flag: the one error line on stderr, nothing in out.json."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ADAMOLE_BENCH_RUNS": str(runs_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "adamole_bench.cli", "report", "--format", "json", "--model", "it's"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "single quote" in done.stderr and done.stderr.count("\n") == 1
