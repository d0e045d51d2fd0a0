"""Saved adapters outside the harness: PEFT, load_adapter (folder and runs:/ URI), export, base records.

Every round trip compares logits with max abs diff exactly 0: the loaded model runs the very same
modules on the same weights, so anything else is a bug (the merged LoRA is the one exception: merging
changes the float operations, so it is compared within fp32 tolerance).
"""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import adamole_bench
from adamole_bench.base.errors import UserError
from adamole_bench.harness.model.adapters import record_loadable_base
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.methods.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_CONFIG, build_method

METHODS = ["lora", "mole", "adamole", "soft-moa", "sparse-moa"]
IDS = torch.randint(3, 259, (2, 11), generator=torch.Generator().manual_seed(0))


def trained(name: str, dtype: str = "float32", base=None):
    """(method, base, adapted model) as a sweep leaves them, with every adapter tensor moved off its init
    (LoRA B and MoA's gates start at zero and would hide a dropped adapter); on `base` if given, else tiny-llama."""
    base = base or load_base_model("tiny-llama", dtype=dtype)
    method = build_method(name)
    torch.manual_seed(0)
    model = method.apply(copy.deepcopy(base.model)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return method, base, model


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module", params=METHODS)
def saved(request, tmp_path_factory):
    method, base, model = trained(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    method.save(model, folder, base.reference())
    return request.param, folder, model, base


def test_saved_folder_is_peft_layout_and_names_the_base_portably(saved):
    name, folder, _, base = saved
    assert {p.name for p in folder.iterdir()} == {PEFT_CONFIG, ADAPTER_WEIGHTS, ADAPTER_CONFIG}
    peft_config = json.loads((folder / PEFT_CONFIG).read_text())
    meta = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert peft_config["peft_type"] == name.upper().replace("-", "_")
    assert peft_config["base_model_name_or_path"] == "tiny-llama"
    assert meta["method"] == name and meta["format"] == "peft"
    assert meta["base_model"] == {
        "id": "tiny-llama", "embedded": "tiny-llama", "source": "code", "fingerprint": base.fingerprint,
        "revision": None, "dtype": "float32", "note": meta["base_model"]["note"],
    }  # fmt: skip
    assert base.fingerprint.startswith("sha256:")


def test_peft_from_pretrained_restores_identical_logits_and_saves_peft_layout(saved, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    _, folder, model, _ = saved
    restored = PeftModel.from_pretrained(load_base_model("tiny-llama").model, str(folder)).eval()
    expected = logits(model)
    assert (logits(restored) - expected).abs().max().item() == 0.0
    assert (logits(load_base_model("tiny-llama").model) - expected).abs().max().item() > 1e-3  # the adapter matters
    stored = load_file(str(folder / ADAPTER_WEIGHTS))
    state = get_peft_model_state_dict(restored, save_embedding_layers=False)
    assert state.keys() == stored.keys() and all(torch.equal(state[k], stored[k]) for k in stored)
    assert not any(p.requires_grad for p in restored.parameters())  # loaded for inference, as PEFT does

    restored.save_pretrained(str(tmp_path))  # PEFT's own save, loaded back by PEFT
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    again = PeftModel.from_pretrained(load_base_model("tiny-llama").model, str(tmp_path))
    assert (logits(again) - expected).abs().max().item() == 0.0


def test_load_adapter_from_folder_generates_like_the_trained_model(saved):
    name, folder, model, base = saved
    loaded = adamole_bench.load_adapter(folder)
    assert loaded.method.name == name and loaded.base.fingerprint == base.fingerprint
    assert (logits(loaded.model) - logits(model)).abs().max().item() == 0.0
    prompt = loaded.tokenizer("fruit or color: apple", return_tensors="pt")
    generated = loaded.model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    reference = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 6
    assert torch.equal(generated, reference)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """One real MLflow store for the runs:/ tests (creating a store costs seconds)."""
    from adamole_bench.harness.store.tracking import Tracker

    return Tracker("adapter-reuse", f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")


def test_load_adapter_from_a_runs_uri(saved, tracker):
    name, folder, model, _ = saved
    with tracker.run(f"{name} upload", {"kind": "trial"}) as run_id:
        tracker.log_artifacts(run_id, folder, "adapter")
    loaded = adamole_bench.load_adapter(f"runs:/{run_id}/adapter", tracking_uri=tracker.uri)
    assert (logits(loaded.model) - logits(model)).abs().max().item() == 0.0


IMPORT_ORDERS = {
    "ours, then peft": ["import adamole_bench", "assert 'peft' not in sys.modules and 'torch' not in sys.modules", "import peft"],
    "peft, then ours": ["import peft", "import adamole_bench"],
    # transformers' is_peft_available() and lm-eval probe with find_spec("peft"), which loads nothing
    "ours, a find_spec probe, then transformers": [
        "import adamole_bench",
        "import importlib.util",
        "assert importlib.util.find_spec('peft')",
        "import transformers",
        "transformers.utils.is_peft_available()",
    ],
    "transformers, then ours": ["import transformers", "from transformers import AutoModelForCausalLM", "import adamole_bench"],
    "ours, then lm-eval's HF model": ["import adamole_bench", "import lm_eval.models.huggingface"],
    "lm-eval's HF model, then ours": ["import lm_eval.models.huggingface", "import adamole_bench"],
    # our PEFT classes import peft themselves: registration must wait until they are defined
    "our MoA tuner first": ["from adamole_bench.methods.peft_tuner import MoaTuner"],
}


@pytest.fixture(scope="module")
def exported_mixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported-adamole")
    method, base, model = trained("adamole")
    method.save(model, folder, base.reference())
    record_loadable_base(folder)  # what `export` does: AutoPeft finds the base offline
    torch.save(IDS, folder / "ids.pt")
    torch.save(logits(model), folder / "expected.pt")
    return folder


@pytest.mark.integration
@pytest.mark.parametrize("order", IMPORT_ORDERS)
def test_peft_loads_an_exported_mixture_in_every_import_order(exported_mixture, order):
    """A fresh interpreter per order: `import adamole_bench` stays instant (no torch, no peft) and
    `PeftModel.from_pretrained` restores the mixture exactly whichever of peft, transformers and
    lm-eval came first, also after a `find_spec("peft")` probe."""
    folder = exported_mixture
    check = [
        "import torch",
        "from peft import PeftModel",
        "from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING as tuners",
        "print(sorted(t.__name__ for k, t in tuners.items() if k in ('MOLE', 'ADAMOLE', 'SOFT_MOA', 'SPARSE_MOA')))",
        "from adamole_bench.harness.model.loading import load_base_model",
        f"model = PeftModel.from_pretrained(load_base_model('tiny-llama').model, {str(folder)!r})",
        f"out = model(input_ids=torch.load({str(folder / 'ids.pt')!r})).logits.detach()",
        f"print('diff', (out - torch.load({str(folder / 'expected.pt')!r})).abs().max().item())",
        "from peft import AutoPeftModelForCausalLM",
        f"auto = AutoPeftModelForCausalLM.from_pretrained({str(folder)!r})",
        f"out = auto(input_ids=torch.load({str(folder / 'ids.pt')!r})).logits.detach()",
        f"print('auto diff', (out - torch.load({str(folder / 'expected.pt')!r})).abs().max().item())",
    ]
    script = "\n".join(["import sys", *IMPORT_ORDERS[order], *check])
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=folder, env=offline, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['MoaTuner', 'MoaTuner', 'MoeLoraTuner', 'MoeLoraTuner']" in result.stdout, result.stdout
    assert "\ndiff 0.0" in result.stdout and "auto diff 0.0" in result.stdout, result.stdout


def test_mixtures_in_bfloat16_round_trip_exactly(tmp_path):
    method, base, model = trained("adamole", dtype="bfloat16")
    method.save(model, tmp_path, base.reference())
    loaded = adamole_bench.load_adapter(tmp_path)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16  # the recorded dtype
    assert (logits(loaded.model) - logits(model)).abs().max().item() == 0.0


def test_every_builtin_method_trains_through_peft():
    """One adapter path: `apply` is PEFT's `get_peft_model` with the method's own tuner, and PEFT's
    adapter state dict holds exactly the tensors the harness trains (so a save misses none)."""
    from peft import PeftModel, get_peft_model_state_dict
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    for name in ("lora", "mole", "adamole", "soft-moa", "sparse-moa"):
        method = build_method(name)
        model = method.apply(load_base_model("tiny-llama").model)
        assert isinstance(model, PeftModel), name
        assert type(model.base_model) is PEFT_TYPE_TO_TUNER_MAPPING[method.peft_type], name  # type: ignore[index]  # PEFT types its keys as its closed PeftType enum; ours are str-enum members, equal to their strings
        trained = {id(p) for p in model.parameters() if p.requires_grad}
        saved = get_peft_model_state_dict(model, save_embedding_layers=False)
        assert {id(t) for t in model.state_dict(keep_vars=True).values() if id(t) in trained} == trained
        assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0, name


def test_peft_refuses_what_a_mixture_cannot_do_and_undoes_cleanly(tmp_path):
    from peft import PeftModel

    for name in ("mole", "soft-moa"):
        method, base, model = trained(name)
        folder = tmp_path / name
        method.save(model, folder, base.reference())
        restored = PeftModel.from_pretrained(load_base_model("tiny-llama").model, str(folder))
        with pytest.raises(ValueError, match="cannot be merged"):
            restored.merge_and_unload()
        plain = logits(load_base_model("tiny-llama").model)
        with restored.disable_adapter():
            assert (logits(restored) - plain).abs().max().item() == 0.0  # MoA's hooks are off too
        assert (logits(restored) - logits(model)).abs().max().item() == 0.0
        if name == "soft-moa":
            with pytest.raises(ValueError, match="one MoA adapter"):
                restored.load_adapter(str(folder), adapter_name="second")
        else:
            restored.load_adapter(str(folder), adapter_name="second")  # MoLE: several adapters, as LoRA
            restored.set_adapter("second")
            assert (logits(restored) - logits(model)).abs().max().item() == 0.0
        assert (logits(restored.unload()) - plain).abs().max().item() == 0.0


def test_peft_save_pretrained_on_a_harness_model_round_trips_as_save_adapter_does(tmp_path):
    """A trained model is a PeftModel: PEFT's own save_pretrained writes what PeftModel.from_pretrained
    restores exactly, and save_adapter/load_adapter (which add the base model's record) agree."""
    from peft import PeftModel

    method, base, model = trained("mole")
    model.save_pretrained(tmp_path / "peft")
    restored = PeftModel.from_pretrained(load_base_model("tiny-llama").model, str(tmp_path / "peft"))
    assert (logits(restored) - logits(model)).abs().max().item() == 0.0
    adamole_bench.save_adapter(model, tmp_path / "ours", method, base)
    assert (logits(adamole_bench.load_adapter(tmp_path / "ours").model) - logits(model)).abs().max().item() == 0.0


def test_local_and_mismatched_bases_need_an_explicit_choice(tmp_path):
    base_folder = tmp_path / "my-base"
    tiny = load_base_model("tiny-llama")
    tiny.model.save_pretrained(base_folder)
    tiny.tokenizer.save_pretrained(base_folder)
    local = load_base_model(str(base_folder))
    record = local.reference()
    assert record["id"] == "my-base" and record["source"] == "local" and str(tmp_path) not in json.dumps(record)
    assert record["fingerprint"].startswith("sha256:")

    method = build_method("adamole")
    model = method.apply(copy.deepcopy(local.model))
    method.save(model, tmp_path / "adapter", record)
    with pytest.raises(UserError, match="base_model='/path/to/my-base'"):
        adamole_bench.load_adapter(tmp_path / "adapter")
    loaded = adamole_bench.load_adapter(tmp_path / "adapter", base_model=str(base_folder))
    assert (logits(loaded.model) - logits(model)).abs().max().item() == 0.0

    method, base, model = trained("mole")
    method.save(model, tmp_path / "mole", base.reference())
    with pytest.raises(UserError, match="check_base=False"):
        adamole_bench.load_adapter(tmp_path / "mole", dtype="bfloat16")  # other weights: other fingerprint
    assert adamole_bench.load_adapter(tmp_path / "mole", dtype="bfloat16", check_base=False).base.source == "code"


def test_an_export_names_the_local_base_folder_only_while_it_holds_the_weights_trained_on(tmp_path):
    """record_loadable_base (what `export` runs): the folder's path when its weight files still have the recorded
    fingerprint, so AutoPeft loads the very weights; the portable id when they changed (never other weights)."""
    from peft import AutoPeftModelForCausalLM

    base_folder = tmp_path / "my-base"
    tiny = load_base_model("tiny-llama")
    tiny.model.save_pretrained(base_folder)
    tiny.tokenizer.save_pretrained(base_folder)
    method, local, model = trained("lora", base=load_base_model(str(base_folder)))
    method.save(model, tmp_path / "adapter", local.reference())
    assert record_loadable_base(tmp_path / "adapter", str(base_folder)) == str(base_folder.resolve())
    assert json.loads((tmp_path / "adapter" / PEFT_CONFIG).read_text())["base_model_name_or_path"] == str(base_folder.resolve())
    assert (logits(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")) - logits(model)).abs().max().item() == 0.0

    method.save(model, tmp_path / "changed", local.reference())
    load_base_model("tiny-llama", dtype="bfloat16").model.save_pretrained(base_folder)  # other weights in the same folder
    assert record_loadable_base(tmp_path / "changed", str(base_folder)) == "my-base"
    assert json.loads((tmp_path / "changed" / PEFT_CONFIG).read_text())["base_model_name_or_path"] == "my-base"


@pytest.mark.integration
def test_hub_models_are_recorded_and_reloaded_at_their_commit(tmp_path):
    """A hub model from a local HF cache (offline): the adapter records id + commit, and loads onto that
    commit even after the repo's main moved to other weights."""
    from adamole_bench.harness.model.loading import tiny_llama

    repo = tmp_path / "hub" / "models--testorg--tiny"
    old, new = "a" * 40, "b" * 40
    for commit, seed in ((old, 0), (new, 1)):
        tiny_llama(seed=seed).save_pretrained(repo / "snapshots" / commit)
        load_base_model("tiny-llama").tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(old)
    script = f"""
import json, pathlib, torch, adamole_bench
from adamole_bench.base.errors import UserError
from adamole_bench.harness.model.loading import load_base_model
from adamole_bench.methods.registry import build_method
base = load_base_model("testorg/tiny")
method = build_method("mole")
model = method.apply(base.model).eval()
torch.nn.init.normal_(model.get_base_model().model.layers[0].self_attn.q_proj.adapter["default"].experts.lora_B)
method.save(model, {str(tmp_path / "adapter")!r}, base.reference())
ids = torch.randint(3, 259, (2, 7))
expected = model(input_ids=ids).logits
pathlib.Path({str(repo / "refs" / "main")!r}).write_text({new!r})
loaded = adamole_bench.load_adapter({str(tmp_path / "adapter")!r})
print("record", json.dumps(loaded.metadata["base_model"]))
print("diff", (loaded.model(input_ids=ids).logits - expected).abs().max().item())
try:
    adamole_bench.load_adapter({str(tmp_path / "adapter")!r}, base_model="testorg/tiny")
except UserError as err:
    print("refused", err)
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.split("record ", 1)[1].splitlines()[0])
    assert record["id"] == "testorg/tiny" and record["source"] == "hub"
    assert record["revision"] == old and record["fingerprint"] == f"hub:{old}"
    assert "diff 0.0" in result.stdout
    assert f"hub:{new}" in result.stdout.split("refused ", 1)[1]  # main now holds other weights


@pytest.mark.integration
def test_embedded_smollm2_is_recorded_by_its_hub_id_and_our_fingerprint(tmp_path):
    from adamole_bench.base.paths import cache_dir

    base = load_base_model("smollm2-135m")
    method = build_method("lora", {"rank": 1, "target_modules": ["q_proj"]})
    method.save(method.apply(copy.deepcopy(base.model)), tmp_path, base.reference())
    peft_config = json.loads((tmp_path / PEFT_CONFIG).read_text())
    record = json.loads((tmp_path / ADAPTER_CONFIG).read_text())["base_model"]
    assert peft_config["base_model_name_or_path"] == record["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert record["embedded"] == "smollm2-135m" and record["fingerprint"] == base.fingerprint
    for text in ((tmp_path / PEFT_CONFIG).read_text(), (tmp_path / ADAPTER_CONFIG).read_text()):
        assert str(cache_dir()) not in text  # never a path of this machine


def harness_names(model) -> dict:
    """The trainable tensors under the names the harness's own injection gave them (before it trained
    mixtures through PEFT): `model.layers.0.self_attn.q_proj.adapter.experts.lora_A`, MoA's blocks on
    their decoder layer as `model.layers.0.moa.router.weight`."""
    names = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            name = name.removeprefix("base_model.model.").replace(".adapter.default.", ".adapter.")
            names[re.sub(r"^base_model\.moa_blocks\.default\.(\d+)\.", r"model.layers.\1.moa.", name)] = parameter.detach().contiguous()
    return names


@pytest.mark.parametrize("name", ["adamole", "soft-moa"])
def test_adapters_saved_before_the_peft_layout_still_load(tmp_path, name):
    """The harness's old layout (its own tensor names, no base record) loads once the base is named."""
    from safetensors.torch import save_file

    method, _, model = trained(name)
    tensors = harness_names(model)
    assert "model.layers.0.self_attn.q_proj.adapter.experts.lora_A" in tensors if name == "adamole" else "model.layers.1.moa.router.weight" in tensors
    save_file(tensors, str(tmp_path / ADAPTER_WEIGHTS))
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps({"method": name, "config": json.loads(json.dumps(vars(method.config))), "tags": {}}))
    with pytest.raises(UserError, match="base_model="):
        adamole_bench.load_adapter(tmp_path)
    loaded = adamole_bench.load_adapter(tmp_path, base_model="tiny-llama")
    assert (logits(loaded.model) - logits(model)).abs().max().item() == 0.0


def test_load_adapter_refuses_bad_sources_in_one_line(tmp_path, tracker):
    with pytest.raises(UserError, match="no adapter folder"):
        adamole_bench.load_adapter(tmp_path / "missing")
    with pytest.raises(UserError, match="not an adamole-bench adapter"):
        adamole_bench.load_adapter(tmp_path)
    with pytest.raises(UserError, match="cannot fetch runs:/"):
        adamole_bench.load_adapter("runs:/0123456789abcdef/adapter", tracking_uri=tracker.uri)


# ---------------------------------------------------------------------------------------------
# export, on runs of a real sweep


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """Every adapter method trained briefly (adapters saved), plus a lora trial run with save_adapters=false."""
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        runs = tmp_path_factory.mktemp("export") / "runs"
        patch.setenv("ADAMOLE_BENCH_RUNS", str(runs))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        from typer.testing import CliRunner

        from adamole_bench.cli import app

        common = ["--model", "tiny-llama", "--tasks", "fruit_or_color", "--max-steps", "3", "--limit", "8"]
        for extra in (["--methods", ",".join(METHODS)], ["--methods", "lora", "--seeds", "1", "save_adapters=false"]):
            result = CliRunner().invoke(app, ["run", *common, *extra])
            assert result.exit_code == 0, result.output
        client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("adamole-bench")
        assert experiment is not None
        trials = client.search_runs([experiment.experiment_id], "tags.kind = 'trial'")
        ids = {(r.data.tags["method"], r.data.tags["seed"]): r for r in trials}
        yield runs, ids


@pytest.fixture
def store(sweep_store, monkeypatch):
    runs, ids = sweep_store
    monkeypatch.setenv("ADAMOLE_BENCH_RUNS", str(runs))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return ids


@pytest.mark.integration
def test_export_writes_card_and_a_loadable_adapter(store, cli, tmp_path):
    run = store[("mole", "0")]
    result = cli("export", run.info.run_id, tmp_path / "out")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out"
    assert {PEFT_CONFIG, ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md"} <= {p.name for p in folder.iterdir()}
    card = (folder / "README.md").read_text()
    metrics, tags = run.data.metrics, run.data.tags
    acc, stderr = metrics["eval/acc"], metrics["eval/acc_stderr"]
    assert f"| acc | {acc:.4f} | {stderr:.4f} | [{acc - 1.959964 * stderr:.4f}, {acc + 1.959964 * stderr:.4f}] | 8 |" in card
    assert f'"config_hash": "{tags["config_hash"]}"' in card and '"top_k": 2' in card  # the run's config
    assert tags["data_fingerprint.eval"] in card and tags["git_commit"] in card and tags["model_fingerprint"] in card
    assert "adamole_bench.load_adapter(" in card and "AutoPeftModelForCausalLM.from_pretrained(" in card
    from_folder = adamole_bench.load_adapter(folder)
    from_run = adamole_bench.load_adapter(f"runs:/{run.info.run_id}/adapter")
    assert (logits(from_folder.model) - logits(from_run.model)).abs().max().item() == 0.0


@pytest.mark.integration
def test_export_merged_lora_matches_the_adapter(store, cli, tmp_path):
    from transformers import AutoModelForCausalLM

    result = cli("export", store[("lora", "0")].info.run_id, tmp_path / "lora", "--merged")
    assert result.exit_code == 0, result.output
    adapter = adamole_bench.load_adapter(tmp_path / "lora")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "merged").eval()
    expected = logits(adapter.model)
    assert (logits(merged) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert (logits(merged) - logits(load_base_model("tiny-llama").model)).abs().max().item() > 1e-4  # LoRA is in it
    assert "merged/" in (tmp_path / "lora" / "README.md").read_text()


@pytest.mark.integration
@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", "no run 'not-a-run'"),
        ("no_adapter", "saved no adapter"),
        ("not_empty", "not an empty folder"),
        ("merged_mixture", "--merged is for lora only"),
    ],
)
def test_export_errors_are_one_line_exit_2_before_any_work(store, cli, tmp_path, case, message):
    target = tmp_path / "out"
    run_id = {"no_adapter": store[("lora", "1")], "not_empty": store[("mole", "0")], "merged_mixture": store[("mole", "0")]}.get(case)
    args = ["export", run_id.info.run_id if run_id else "not-a-run", target]
    if case == "not_empty":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    if case == "merged_mixture":
        args.append("--merged")
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if case == "not_empty" else [])  # nothing written
    if case == "not_empty":
        assert [p.name for p in target.iterdir()] == ["keep.txt"]


@pytest.mark.integration
def test_export_finds_a_trial_by_method_task_seed_and_asks_when_it_is_ambiguous(store, cli, tmp_path):
    result = cli("export", "mole/fruit_or_color/0", tmp_path / "by-name")
    assert result.exit_code == 0, result.output
    assert f"from run {store[('mole', '0')].info.run_id}" in result.output
    assert json.loads((tmp_path / "by-name" / PEFT_CONFIG).read_text())["peft_type"] == "MOLE"
    same = cli("export", "mole/fruit_or_color/seed0", tmp_path / "seed-spelling", "--model", "tiny-llama")
    assert same.exit_code == 0 and f"from run {store[('mole', '0')].info.run_id}" in same.output, same.output
    missing = cli("export", "mole/fruit_or_color/7", tmp_path / "none")
    assert missing.exit_code == 2 and "no FINISHED trial mole/fruit_or_color/7" in missing.output, missing.output
    other_config = cli("export", "mole/fruit_or_color/0", tmp_path / "none", "--config-hash", "ffffffff")
    assert other_config.exit_code == 2 and "no FINISHED trial" in other_config.output, other_config.output
    assert not (tmp_path / "none").exists()


@pytest.mark.integration
def test_autopeft_loads_every_export_offline_in_a_fresh_process(store, cli, tmp_path):
    """The documented import (`import adamole_bench`, then PEFT's AutoPeftModelForCausalLM on the folder)
    restores each export exactly: the base named in adapter_config.json is the very weights trained on."""
    folders = []
    for name in METHODS:
        folder = tmp_path / name
        result = cli("export", store[(name, "0")].info.run_id, folder, *(["--merged"] if name == "lora" else []))
        assert result.exit_code == 0, result.output
        base_path = json.loads((folder / PEFT_CONFIG).read_text())["base_model_name_or_path"]
        assert os.path.isdir(base_path) and "Warning" not in (folder / "README.md").read_text()  # tiny-llama has no hub twin
        torch.save(logits(adamole_bench.load_adapter(folder).model), folder / "expected.pt")
        folders.append(str(folder))
    script = "\n".join([
        "import sys, torch",
        "import adamole_bench",
        "from peft import AutoPeftModelForCausalLM",
        f"ids = torch.tensor({IDS.tolist()})",
        f"for folder in {folders!r}:",
        "    out = AutoPeftModelForCausalLM.from_pretrained(folder).eval()(input_ids=ids).logits.detach()",
        "    print(folder.rsplit('/', 1)[1], (out - torch.load(folder + '/expected.pt')).abs().max().item())",
    ])  # fmt: skip
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=offline, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [word for name in METHODS for word in (name, "0.0")], result.stdout


def test_the_card_warns_that_a_hub_twin_has_other_weights():
    """SmolLM2 is dequantised from a GGUF: the card must not let the hub id pass for the weights trained on."""
    from types import SimpleNamespace

    from adamole_bench.harness.model.loading import EMBEDDED_HUB_IDS, EMBEDDED_MODELS
    from adamole_bench.harness.report.export import model_card

    record = {"id": EMBEDDED_HUB_IDS["smollm2-135m"], "embedded": "smollm2-135m", "source": "embedded", "fingerprint": "sha256:0123",
              "dtype": "float32", "note": EMBEDDED_MODELS["smollm2-135m"][0]}  # fmt: skip
    run = SimpleNamespace(info=SimpleNamespace(run_id="r1"), data=SimpleNamespace(tags={"task": "copa"}, metrics={}))
    card = model_card(run, {}, {"method": "mole", "format": "peft", "base_model": record}, merged=False, loadable_base="/cache/smollm2")
    assert f"the hub's `{record['id']}` weights differ" in card and "sha256:0123" in card and "`/cache/smollm2`" in card
    assert "AutoPeftModelForCausalLM.from_pretrained(" in card
