"""Each private peft/transformers API in base/upstream.py still does what we rely on, in the installed
release; a failure names the library and version, so an upgrade that broke one says where to look."""

import inspect
import json

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
    assert PEFT_TYPE_TO_TUNER_MAPPING["ADAMOLE"] is tuner_class("ADAMOLE") and PEFT_TYPE_TO_PREFIX_MAPPING["ADAMOLE"] == "adapter"
    assert upstream.register_peft_type("LORA", MixtureConfig, tuner_class("MOLE"), "adapter") is False  # PEFT's own stays
    assert PEFT_TYPE_TO_CONFIG_MAPPING["LORA"] is peft.LoraConfig


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
