"""Each private peft/transformers/lm-eval/MLflow API in base/upstream.py still does what we rely on, in the installed
release; a failure names the library and version, so an upgrade that broke one says where to look."""

import functools
import importlib
import inspect
import json
import logging
from typing import cast

import lm_eval
import mlflow
import peft
import pytest
import torch
import transformers

from adamole_bench.base import upstream
from adamole_bench.harness.model.loading import tiny_llama


def changed(library, what: str) -> str:
    return f"{what} changed in {library.__name__} {library.__version__}: update adamole_bench/base/upstream.py"


def test_peft_still_refuses_outside_methods_so_we_fill_its_tables():
    """If register_peft_method starts accepting a new name, switch to it (upstream.register_peft_type says why not)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from adamole_bench.methods.peft_integration import MixtureConfig, tuner_class

    with pytest.raises(ValueError, match="Unknown PEFT type"):
        register_peft_method(name="adamole", config_cls=MixtureConfig, model_cls=tuner_class("ADAMOLE"))
    for table in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING):
        assert isinstance(table, dict) and "LORA" in table, changed(peft, "peft.mapping's method tables")
    assert upstream.peft_type_registered("ADAMOLE", MixtureConfig), changed(peft, "registering through peft.mapping")
    # PEFT types the tables' keys as its PeftType enum; a str-enum member's string reaches the same entry.
    configs, tuners = cast(dict[str, type], PEFT_TYPE_TO_CONFIG_MAPPING), cast(dict[str, type], PEFT_TYPE_TO_TUNER_MAPPING)
    assert tuners["ADAMOLE"] is tuner_class("ADAMOLE") and cast(dict[str, str], PEFT_TYPE_TO_PREFIX_MAPPING)["ADAMOLE"] == "adapter"
    assert upstream.register_peft_type("LORA", MixtureConfig, tuner_class("MOLE"), "adapter") is False  # PEFT's own stays
    assert configs["LORA"] is peft.LoraConfig


@pytest.mark.parametrize("hook", upstream.PEFT_TUNER_HOOKS)
def test_the_tuner_hooks_we_override_exist_with_their_parameters(hook):
    from peft.tuners.tuners_utils import BaseTuner

    assert hasattr(BaseTuner, hook), changed(peft, f"BaseTuner.{hook} (gone)")
    parameters = tuple(inspect.signature(getattr(BaseTuner, hook)).parameters)  # a classmethod's has no `cls`
    assert parameters == upstream.PEFT_TUNER_HOOKS[hook], changed(peft, f"BaseTuner.{hook}'s parameters {parameters}")


def test_save_pretrained_writes_the_name_we_set(tmp_path):
    config = tiny_llama().config
    upstream.set_name_or_path(config, "tiny-llama")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved.get("_name_or_path", "tiny-llama") == "tiny-llama", changed(transformers, "PretrainedConfig._name_or_path")
    assert config.name_or_path == "tiny-llama", changed(transformers, "PretrainedConfig._name_or_path")


def test_the_attention_implementation_is_read_where_transformers_keeps_it():
    model = tiny_llama()
    model.set_attn_implementation("eager")
    assert upstream.attention_implementation(model.config) == "eager", changed(transformers, "config._attn_implementation")
    model.set_attn_implementation("sdpa")
    assert upstream.attention_implementation(model.config) == "sdpa", changed(transformers, "config._attn_implementation")


def test_a_dequantised_model_saves_once_its_quantizer_is_dropped(tmp_path):
    model = tiny_llama()
    assert "hf_quantizer" in inspect.getsource(type(model).save_pretrained), changed(transformers, "save_pretrained's hf_quantizer check")
    model.hf_quantizer, model.config.quantization_config = object(), {"quant_method": "gguf"}
    upstream.drop_gguf_quantizer(model)
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())


def test_llama_rotate_half_is_the_literal_rotation():
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    expected = torch.cat([-x[..., 4:], x[..., :4]], dim=-1)
    assert torch.equal(upstream.llama_rotate_half()(x), expected), changed(transformers, "modeling_llama.rotate_half")


def test_hf_length_grouped_sampler_takes_our_arguments_and_permutes():
    lengths = [5, 1, 9, 3, 7, 2]
    sampler = upstream.length_grouped_sampler()(2, lengths=lengths, generator=torch.Generator().manual_seed(0))
    assert sorted(sampler) == list(range(len(lengths))), changed(transformers, "trainer_pt_utils.LengthGroupedSampler")


def test_sdpa_attention_and_mask_take_the_arguments_precision_passes():
    forward, mask = upstream.sdpa_attention()
    assert list(inspect.signature(forward).parameters)[:5] == ["module", "query", "key", "value", "attention_mask"], changed(
        transformers, "integrations.sdpa_attention.sdpa_attention_forward"
    )
    assert callable(mask), changed(transformers, "masking_utils.sdpa_mask")


@pytest.mark.parametrize("hook", upstream.HFLM_SCORER_HOOKS)
def test_the_hflm_methods_our_scorers_override_exist_with_their_parameters(hook):
    from lm_eval.models.huggingface import HFLM

    assert hasattr(HFLM, hook), changed(lm_eval, f"HFLM.{hook} (gone)")
    parameters = tuple(inspect.signature(getattr(HFLM, hook)).parameters)
    assert parameters == upstream.HFLM_SCORER_HOOKS[hook], changed(lm_eval, f"HFLM.{hook}'s parameters {parameters}")


def test_simple_evaluate_looks_up_the_git_hash_and_environment_we_replace():
    import lm_eval.evaluator

    # A name in co_names is read from the module's globals at call time: replacing the attribute reaches the call.
    called = inspect.unwrap(lm_eval.evaluator.simple_evaluate).__code__.co_names  # under lm-eval's argument-check decorator
    for name in ("get_git_commit_hash", "add_env_info"):
        assert name in called, changed(lm_eval, f"simple_evaluate's call of {name}")
    originals = lm_eval.evaluator.get_git_commit_hash, lm_eval.evaluator.add_env_info
    with upstream.lm_eval_lookups_replaced(git_commit=lambda: "ours", add_env_info=dict.clear):
        assert lm_eval.evaluator.get_git_commit_hash() == "ours" and lm_eval.evaluator.add_env_info is dict.clear
    assert (lm_eval.evaluator.get_git_commit_hash, lm_eval.evaluator.add_env_info) == originals


def test_lm_evals_environment_record_is_the_one_it_adds_to_results():
    record = upstream.lm_eval_environment()
    assert {"pretty_env_info", "transformers_version"} <= set(record), changed(lm_eval, f"loggers.utils.add_env_info's keys {sorted(record)}")


@pytest.mark.parametrize("module_name", upstream.LM_EVAL_TQDM_MODULES)
def test_lm_evals_progress_bars_come_from_the_tqdm_we_replace(module_name):
    module = importlib.import_module(module_name)
    assert hasattr(module, "tqdm") and "tqdm(" in inspect.getsource(module), changed(lm_eval, f"{module_name}'s tqdm")
    original = module.tqdm
    with upstream.lm_eval_tqdm_replaced(len):
        assert module.tqdm is len
    assert module.tqdm is original


def test_lm_evals_cli_builds_its_task_index_from_the_class_we_replace():
    from lm_eval.config.evaluate_config import EvaluatorConfig
    from lm_eval.tasks import TaskManager

    # Imported inside the method, so the class in lm_eval.tasks at call time is the one used.
    assert "from lm_eval.tasks import TaskManager" in inspect.getsource(EvaluatorConfig.process_tasks), changed(
        lm_eval, "EvaluatorConfig.process_tasks's TaskManager"
    )
    assert "include_defaults" in inspect.signature(TaskManager).parameters, changed(lm_eval, "TaskManager(include_defaults=...)")


def test_an_unknown_task_raises_the_text_we_recognise():
    from lm_eval.config.evaluate_config import EvaluatorConfig
    from lm_eval.tasks import TaskManager

    with upstream.lm_eval_task_manager_replaced(functools.partial(TaskManager, include_defaults=False)), pytest.raises(ValueError) as raised:
        EvaluatorConfig(tasks=["no_such_task"]).process_tasks()
    assert upstream.lm_eval_tasks_not_found(raised.value), changed(lm_eval, f"the unknown-task error ({raised.value})")


@pytest.mark.parametrize("module_name", upstream.LM_EVAL_EXPECTED_WARNINGS)
def test_the_warnings_we_drop_are_still_logged_where_we_filter_them(module_name):
    source = inspect.getsource(importlib.import_module(module_name))
    for phrase in upstream.LM_EVAL_EXPECTED_WARNINGS[module_name]:
        assert phrase in source, changed(lm_eval, f"{module_name}'s warning '{phrase}'")


def test_lm_evals_cli_entry_point_reads_only_argv():
    parameters = inspect.signature(upstream.lm_eval_cli()).parameters
    assert not parameters, changed(lm_eval, f"__main__.cli_evaluate's parameters {tuple(parameters)}")


def test_mlflows_database_errors_are_logged_by_the_logger_we_quiet():
    module = importlib.import_module(upstream.MLFLOW_DB_LOGGER)
    loggers = [value for value in vars(module).values() if isinstance(value, logging.Logger)]
    assert [logger.name for logger in loggers] == [upstream.MLFLOW_DB_LOGGER], changed(mlflow, f"{upstream.MLFLOW_DB_LOGGER}'s logger")
