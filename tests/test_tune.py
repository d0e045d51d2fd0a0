"""`adamole-bench tune`: a bad search space is one line and exit 2 before any work; the validation split is
carved from the train split, deterministically, and no eval doc is ever scored by the search; every search
trial is an MLflow run under its study's run with its sampled values and intermediate scores; the best
settings are rerun on the eval split as an ordinary sweep; rerunning continues the study; `--executor ray`
runs the same search through Ray Tune. Everything on tiny-llama, driven by the CLI as a user would."""

import json
from pathlib import Path

import pytest
import yaml

from adamole_bench.base.errors import UserError
from adamole_bench.harness.settings.load import load_config
from adamole_bench.harness.tune.search import carve
from adamole_bench.harness.tune.space import load_space
from adamole_bench.tasks.sources import fingerprint, load_task
from adamole_bench.tests.fault_tools import cli_env, run_cli, store_runs

pytest.importorskip("optuna", reason="the tune extra (make setup installs it)")

TINY = ["--model", "tiny-llama", "--tasks", "fruit_or_color", "--limit", "8", "--max-steps", "4", "save_adapters=false", "train.warmup_steps=0"]
SPACE = {
    "seed": 0,
    "validation": {"fraction": 0.1, "max_docs": 12},
    "pruner": "median",
    "report_every": 2,
    "startup_trials": 1,
    "budget": {"trials": 2},
    "methods": {"lora": {"space": {"train.lr": {"log_uniform": [1.0e-4, 1.0e-2]}, "lora.rank": {"choice": [4, 8]}}}},
}


def _space(folder: Path, **changes) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **changes}))
    return path


# --- the space file, before any work ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"methods": {"lora": {"space": {"train.lr": {"log_uniform": [0, 1.0e-2]}}}}}, "needs low > 0"),
        ({"methods": {"lora": {"space": {"train.lr": {"uniform": [1.0e-2, 1.0e-4]}}}}}, "needs low < high"),
        ({"methods": {"lora": {"space": {"lora.rank": {"int": [0, 8]}}}}}, "rank must be >= 1"),
        ({"methods": {"lora": {"space": {"adamole.num_experts": {"choice": [2, 4]}}}}}, "do not depend on adamole.num_experts"),
        ({"methods": {"lora": {"space": {"train.lr": {"normal": [0, 1]}}}}}, "must be one of log_uniform"),
        ({"methods": {"lora": {"space": {"lora.rank": {"choice": [4, 4]}}}}}, "more than once"),
        ({"methods": {"mole": {"space": {"train.lr": {"uniform": [0.1, 0.2]}}}}}, "has no space for method 'lora'"),
        ({"budget": {"trials": 0}}, "budget.trials must be an integer >= 1"),
        ({"budget": {"steps": 0}}, "budget.steps must be an integer >= 1"),
        ({"budget": {}}, r"budget must be \{trials: N\}"),
        ({"validation": {"fraction": 1.5}}, "validation.fraction must be between 0 and 1"),
        ({"pruner": "hyperband"}, "pruner must be one of median, asha, none"),
        ({"sampler": "random"}, "unknown key 'sampler'"),
    ],
)
def test_a_bad_space_names_the_fix(tmp_path, changes, message):
    config = load_config(None, [], methods=["lora"], tasks=["fruit_or_color"], model="tiny-llama")
    with pytest.raises(UserError, match=message):
        load_space(_space(tmp_path, **changes), config)


@pytest.mark.integration  # a CLI process: ~10 s here
def test_bad_space_is_one_line_and_exit_2_before_any_run(tmp_path):
    space = _space(tmp_path, methods={"lora": {"space": {"train.lr": {"log_uniform": [-1, 1]}}}})
    result = run_cli(["tune", "--space", str(space), "--methods", "lora", *TINY], cli_env(tmp_path / "runs"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and "methods.lora.space.train.lr.log_uniform needs low > 0" in result.stderr
    assert not (tmp_path / "runs").exists()  # no store, no study: nothing was done


def test_the_shipped_space_is_valid_for_every_method_it_names():
    shipped = Path(__file__).resolve().parent.parent / "configs" / "tune.yaml"
    methods = list(yaml.safe_load(shipped.read_text())["methods"])
    space = load_space(shipped, load_config(None, [], methods=methods, tasks=["copa"]))
    assert set(space.methods) == {"lora", "mole", "adamole"} and all(m.budget.trials == 12 for m in space.methods.values())
    assert space.methods["adamole"].dimensions[0].kind == "log_uniform"


def test_study_name_follows_the_space_not_the_budget(tmp_path):
    config = load_config(None, [], methods=["lora"], tasks=["fruit_or_color"], model="tiny-llama")
    name = load_space(_space(tmp_path), config).study_name(config, "lora")
    assert load_space(_space(tmp_path, budget={"trials": 9}), config).study_name(config, "lora") == name
    assert load_space(_space(tmp_path, seed=1), config).study_name(config, "lora") != name
    other = load_config(None, ["train.weight_decay=0.1"], methods=["lora"], tasks=["fruit_or_color"], model="tiny-llama")
    assert load_space(_space(tmp_path), other).study_name(other, "lora") != name


def test_carve_is_seeded_and_holds_out_no_eval_doc():
    data = load_task("fruit_or_color")  # its generated splits repeat docs: some train docs equal eval docs
    key = lambda doc: json.dumps(doc, sort_keys=True)  # noqa: E731
    official = {key(d) for d in data.splits["eval"]}
    assert any(key(d) in official for d in data.splits["train"]), "the check below needs a train doc that equals an eval doc"
    carved = carve(data, 0.5, None, seed=3)
    assert carved.splits == carve(data, 0.5, None, seed=3).splits and carved.splits != carve(data, 0.5, None, seed=4).splits
    assert not {key(d) for d in carved.splits["eval"]} & official
    assert sorted(map(key, carved.splits["train"] + carved.splits["eval"])) == sorted(map(key, data.splits["train"]))
    assert len(carved.splits["eval"]) == round(0.5 * len(data.splits["train"]))
    assert len(carve(data, 0.5, 7, seed=3).splits["eval"]) == 7


# --- tune on tiny-llama ---------------------------------------------------------------------------


def _data_dir(root: Path) -> Path:
    """fruit_or_color with every doc's word unique, eval words never in train: a scored text says which split it came from."""
    folder = root / "data" / "fruit_or_color"
    folder.mkdir(parents=True)
    for split, count in (("train", 96), ("eval", 24)):
        rows = [{"idx": i, "word": f"{split}{i}{'berry' if i % 2 else 'blue'}", "label": i % 2} for i in range(count)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "data"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One `tune` (budget 2), then the same command again, then with budget 3."""
    root = tmp_path_factory.mktemp("tune")
    env, data = cli_env(root / "runs"), _data_dir(root)
    args = ["tune", "--methods", "lora", "--seeds", "0,1", "--data-dir", str(data), *TINY]
    results = [run_cli([*args, "--space", str(_space(root))], env, timeout=900) for _ in range(2)]
    results.append(run_cli([*args, "--space", str(_space(root, budget={"trials": 3}))], env, timeout=900))
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, data, results


def _search_runs(root: Path) -> list:
    return [r for r in store_runs(f"sqlite:///{root / 'runs' / 'mlflow.db'}", "adamole-bench-search") if r.data.tags.get("kind") == "trial"]


@pytest.mark.integration
def test_search_trials_are_runs_under_their_study(tuned):
    root, _, (first, _, _) = tuned
    runs = store_runs(f"sqlite:///{root / 'runs' / 'mlflow.db'}", "adamole-bench-search")
    (study,) = [r for r in runs if r.data.tags.get("kind") == "study"]
    search = _search_runs(root)
    assert len(search) == 3 and all(r.data.tags["mlflow.parentRunId"] == study.info.run_id for r in search)
    for run in search:
        values = json.loads(run.data.tags["search.values"])
        assert set(values) == {"train.lr", "lora.rank"} and 1e-4 <= values["train.lr"] <= 1e-2 and values["lora.rank"] in (4, 8)
        assert run.data.params["search.train.lr"] == str(values["train.lr"]) and run.data.params["train.lr"] == str(values["train.lr"])
        assert run.data.metrics["search/steps"] == 4
    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}").get_metric_history(search[0].info.run_id, "search/val_score")
    assert [m.step for m in history] == [2]  # the intermediate score the pruner saw (step 4 is the trial's own score)
    assert "lora search trial 0" in first.stdout and "lora search trial 1" in first.stdout


@pytest.mark.integration
def test_rerun_continues_the_study(tuned):
    root, _, (_, again, more) = tuned
    assert "budget spent (2 trials)" in again.stdout and "lora search trial" not in again.stdout
    assert "lora search trial 2" in more.stdout and "search trial 0:" not in more.stdout and "search trial 1:" not in more.stdout
    assert len(_search_runs(root)) == 3  # 2 + nothing + 1: no finished search trial redone
    assert "already done, skipped" in again.stdout  # the final sweep is reused too


@pytest.mark.integration
def test_best_settings_rerun_on_the_eval_split_and_the_table_states_them(tuned):
    root, _, (first, _, more) = tuned
    search = _search_runs(root)
    best = max(search[:2], key=lambda r: r.data.metrics["eval/acc"])  # the first tune's two trials
    chosen = json.loads(best.data.tags["search.values"])
    finals = [
        r for r in store_runs(f"sqlite:///{root / 'runs' / 'mlflow.db'}") if r.data.tags.get("kind") == "trial" and r.data.tags["method"] == "lora"
    ]
    first_finals = [r for r in finals if r.data.tags["grid.train.lr"] == str(chosen["train.lr"])]
    assert sorted(r.data.tags["seed"] for r in first_finals) == ["0", "1"]
    assert all(r.data.tags["grid.lora.rank"] == str(chosen["lora.rank"]) and r.data.metrics["eval/docs"] == 8 for r in first_finals)
    row = next(line for line in first.stdout.splitlines() if line.startswith("| lora | 2 trials |"))
    assert "2 complete" in row and f"train.lr={chosen['train.lr']:.4g}" in row and f"lora.rank={chosen['lora.rank']}" in row
    assert "| lora | 3 trials |" in more.stdout


@pytest.mark.integration
def test_no_eval_doc_reaches_the_search(tuned):
    """Every doc a search trial scored (lm-eval's per-doc samples, by doc id into the split it was given) is a
    train doc; the split's fingerprint, recorded on the run, is the carved one; no eval text appears."""
    root, data, _ = tuned
    task = load_task("fruit_or_color", str(data))
    carved = carve(task, SPACE["validation"]["fraction"], SPACE["validation"]["max_docs"], SPACE["seed"])
    eval_words = {d["word"] for d in task.splits["eval"]}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    for run in _search_runs(root):
        assert run.data.tags["data_fingerprint.eval"] == fingerprint(carved.splits["eval"]) != fingerprint(task.splits["eval"])
        samples = json.loads(Path(client.download_artifacts(run.info.run_id, "lm_eval/samples.json", str(root))).read_text())
        scored = [carved.splits["eval"][s["doc_id"]]["word"] for s in samples]
        assert len(scored) == len(carved.splits["eval"]) == 10 and not set(scored) & eval_words
        assert all(word.startswith("train") for word in scored)


@pytest.mark.integration
def test_tune_through_ray_tune_and_continue_its_study(tmp_path):
    pytest.importorskip("ray", reason="the ray extra (make setup installs it)")
    args, env = ["tune", "--methods", "lora", "--executor", "ray", *TINY], cli_env(tmp_path / "runs")
    result = run_cli([*args, "--space", str(_space(tmp_path, pruner="asha"))], env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    search = _search_runs(tmp_path)
    assert len({r.data.tags["search.values"] for r in search}) == 2 and all(r.data.tags["executor"] == "ray" for r in search)
    assert "| lora | 2 trials |" in result.stdout
    finals = [
        r
        for r in store_runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
        if r.data.tags.get("kind") == "trial" and r.data.tags["method"] == "lora"
    ]
    assert len(finals) == 1 and finals[0].info.status == "FINISHED" and finals[0].data.tags["executor"] == "ray"

    more = run_cli([*args, "--space", str(_space(tmp_path, pruner="asha", budget={"trials": 3}))], env, timeout=900)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert len(_search_runs(tmp_path)) == 3 and "| lora | 3 trials |" in more.stdout  # Ray's OptunaSearch continued the study on disk
    import optuna

    (study,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert study.n_trials == 3


@pytest.mark.integration  # trains tiny-llama three times in this process
def test_pruning_stops_a_trial_and_looking_changes_nothing(tmp_path):
    """A report that prunes at step 2 stops training there: the run is FAILED with failure=pruned and its
    score at step 2 recorded. Scoring on the way puts the RNGs back: with a look every step or none, the
    finished trial's losses and validation score are equal."""
    from rich.console import Console

    from adamole_bench.base.errors import Pruned
    from adamole_bench.harness.store.tracking import Tracker
    from adamole_bench.harness.tune.search import SearchState, run_search_trial

    config = load_config(None, ["save_adapters=false", "train.warmup_steps=0", "train.max_steps=4"], tasks=["fruit_or_color"], model="tiny-llama")
    values = {"train.lr": 3e-3, "lora.rank": 4}

    def search(report_every: int, report, store: str):
        state = SearchState(config, load_space(_space(tmp_path, report_every=report_every), config))
        tracker = Tracker("tune-test", uri=f"sqlite:///{tmp_path / store}")
        parent = tracker.create_run("study", {"kind": "study"})
        result = run_search_trial(state, tracker, parent, Console(file=None, quiet=True), "lora", values, report, {"study": "s"})
        (run,) = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.kind = 'trial'")
        return result, run, tracker

    def prune(step: int, score: float) -> None:
        raise Pruned(f"stopped at step {step}")

    pruned, run, tracker = search(2, prune, "pruned.db")
    assert (pruned.status, pruned.steps, run.info.status, run.data.tags["failure"]) == ("pruned", 2, "FAILED", "pruned")
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "search/val_score")] == [2]
    assert "train/final_loss" not in run.data.metrics

    seen = []
    looked, looked_run, looked_store = search(1, lambda step, score: seen.append(step), "looked.db")
    plain, plain_run, plain_store = search(99, lambda step, score: seen.append(-step), "plain.db")
    assert seen == [1, 2, 3] and looked.status == plain.status == "complete"
    assert looked.score == plain.score
    losses = [
        [m.value for m in store.client.get_metric_history(r.info.run_id, "train/loss")]
        for store, r in ((looked_store, looked_run), (plain_store, plain_run))
    ]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
