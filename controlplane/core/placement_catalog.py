"""What the placement estimate (placement.py) knows about models and GPUs: a model's size and KV per
token from its Hugging Face `config.json`, a few known models, and the boards and MIG profiles it can
place them on. Pure data and arithmetic: no I/O (the caller reads the config file).

Parameters are counted from the config for the dense decoders sluice serves (Llama, Mistral, Qwen2,
Qwen3) and Mixtral-style MoE; any other architecture needs its parameter count given (`params=`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
GIB = 1 << 30

# bytes per element of the weights or the KV cache, by the names config.json and the CLI use
DTYPE_BYTES: Mapping[str, float] = {
    "float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1, "int4": 0.5,
}
_COUNTED = ("llama", "mistral", "qwen2", "qwen3", "mixtral")  # model_type values count_params knows


class ModelConfigError(ValueError):
    """A model config that the estimate cannot use; the message says which field and what to give."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the memory estimate needs of a model."""

    name: str
    params: int
    layers: int
    kv_heads: int
    head_dim: int
    weight_bytes: float  # per parameter (2 for BF16)
    kv_bytes: float  # per cached element (the KV cache's dtype; SGLang's default is the model's)
    context_length: int

    @property
    def weights_bytes(self) -> int:
        return math.ceil(self.params * self.weight_bytes)

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, every KV head: 2 x layers x kv_heads x head_dim x bytes."""
        return math.ceil(2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes)


def _int(cfg: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"config.json: {key!r} must be a positive integer (got {value!r})")
    return value


def dtype_bytes(name: str) -> float:
    try:
        return DTYPE_BYTES[name.lower()]
    except KeyError:
        raise ModelConfigError(f"unknown dtype {name!r}; known: {', '.join(sorted(DTYPE_BYTES))}") from None


def count_params(cfg: Mapping[str, Any]) -> int:
    """Parameters of a dense (or Mixtral-style MoE) decoder from its config: embeddings, attention
    (q, k, v, o, with Qwen2's q/k/v biases and Qwen3's q/k norms), the gated MLP (gate, up, down) or
    its experts and router, two RMSNorms per layer, the final norm, and the LM head unless tied."""
    kind = str(cfg.get("model_type", ""))
    if kind not in _COUNTED:
        raise ModelConfigError(f"cannot count the parameters of a {kind or 'model without model_type'!r} "
                               f"config (known: {', '.join(_COUNTED)}); give the parameter count")
    hidden, layers, heads = _int(cfg, "hidden_size"), _int(cfg, "num_hidden_layers"), _int(cfg, "num_attention_heads")
    kv_heads = _int(cfg, "num_key_value_heads", heads)
    head_dim = _int(cfg, "head_dim", hidden // heads)
    inter, vocab = _int(cfg, "intermediate_size"), _int(cfg, "vocab_size")
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden
    if cfg.get("attention_bias", kind == "qwen2"):  # Qwen2 always has q/k/v biases (its config omits the key)
        attention += q + 2 * kv
    if kind == "qwen3":
        attention += 2 * head_dim  # q_norm and k_norm
    experts = int(cfg.get("num_local_experts") or 0)
    mlp = experts * 3 * hidden * inter + hidden * experts if experts else 3 * hidden * inter
    per_layer = attention + mlp + 2 * hidden
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return layers * per_layer + embeddings + hidden


def _weight_dtype(cfg: Mapping[str, Any]) -> str:
    quant = cfg.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method", ""))
        if method == "fp8":
            return "fp8"
        raise ModelConfigError(f"a {method or 'quantized'!r} checkpoint: give the weights' dtype (e.g. int4)")
    return str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")


def model_from_config(name: str, cfg: Mapping[str, Any], *, params: int | None = None, dtype: str | None = None,
                      kv_dtype: str | None = None) -> ModelSpec:
    """A `ModelSpec` from a Hugging Face config.json's fields: num_hidden_layers, num_key_value_heads
    (default num_attention_heads), head_dim (default hidden_size / num_attention_heads), torch_dtype
    (or dtype), max_position_embeddings. `dtype`/`kv_dtype` override the weights' and the cache's."""
    if "kv_lora_rank" in cfg:
        raise ModelConfigError("an MLA model (kv_lora_rank): its compressed KV cache is not modelled here")
    hidden, heads = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    weights = dtype or _weight_dtype(cfg)
    spec = ModelSpec(
        name=name, params=params if params is not None else count_params(cfg),
        layers=_int(cfg, "num_hidden_layers"), kv_heads=_int(cfg, "num_key_value_heads", heads),
        head_dim=_int(cfg, "head_dim", hidden // heads), weight_bytes=dtype_bytes(weights),
        kv_bytes=dtype_bytes(kv_dtype or (weights if dtype_bytes(weights) >= 2 else "bfloat16")),
        context_length=_int(cfg, "max_position_embeddings", 4096))
    if spec.params <= 0:
        raise ModelConfigError(f"the parameter count must be positive (got {spec.params})")
    return spec


_LLAMA31_8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
               "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}
# config.json fields of a few models (their Hugging Face repositories'), by the names engines report
KNOWN_MODELS: Mapping[str, Mapping[str, Any]] = {
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Llama-3.1-70B-Instruct": {
        **_LLAMA31_8B, "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
        "intermediate_size": 28672},
    "meta-llama/Llama-3.2-1B-Instruct": {
        **_LLAMA31_8B, "hidden_size": 2048, "num_hidden_layers": 16, "head_dim": 64, "intermediate_size": 8192,
        "tie_word_embeddings": True},
    "meta-llama/Llama-3.2-3B-Instruct": {
        **_LLAMA31_8B, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
        "intermediate_size": 8192, "tie_word_embeddings": True},
    "Qwen/Qwen2.5-7B-Instruct": {
        "model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
        "max_position_embeddings": 32768, "torch_dtype": "bfloat16"},
    "mistralai/Mistral-7B-Instruct-v0.3": {
        **_LLAMA31_8B, "model_type": "mistral", "vocab_size": 32768, "max_position_embeddings": 32768},
}


def known_model(name: str, *, dtype: str | None = None, kv_dtype: str | None = None) -> ModelSpec | None:
    """The spec of a model in `KNOWN_MODELS` (by its full name, or the part after the '/', any case)."""
    want = name.lower()
    for key, cfg in KNOWN_MODELS.items():
        if want in (key.lower(), key.lower().split("/")[-1]):
            return model_from_config(key, cfg, dtype=dtype, kv_dtype=kv_dtype)
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """Somewhere an engine can run: a whole GPU or a MIG instance (profile), with its memory."""

    name: str  # "H100-80GB", "H100-80GB 3g.40gb", or a device seen ("GPU 0 MIG 3g.40gb")
    memory_bytes: int  # as CUDA sees it (NVML's memory total)
    board: str | None = None
    profile: str | None = None  # the MIG profile ("3g.40gb"); None for a whole GPU
    per_board: int = 1  # how many of these one board holds (MIG: at most that many instances)
    measured: bool = True  # False: a MIG profile's memory estimated from its name (see BOARDS)


# Whole-GPU memory as NVML reports it (MiB), and each MIG GPU-instance profile: (name, MiB, instances).
# The H100-80GB profiles' memory is nvidia-smi's `mig -lgip` (GiB, two decimals); the others are the
# profile's nominal size (its name, NVIDIA's MIG user guide) x UNMEASURED, H100's lowest measured/
# nominal ratio (9.75 GiB for 1g.10gb), so the estimate errs small. A live instance's own memory
# (NVML) replaces these wherever sluice sees it. The +me (media extension) profiles have the memory
# of their plain twin and are left out.
UNMEASURED = 0.975
_COUNTS = (7, 4, 3, 2, 1, 1)  # instances per board of the six profiles below, smallest first


def _estimated(*names: str) -> tuple[tuple[str, int, int, bool], ...]:
    return tuple((name, round(int(name.split(".")[1].removesuffix("gb")) * 1024 * UNMEASURED), count, False)
                 for name, count in zip(names, _COUNTS))


BOARDS: Mapping[str, tuple[int, tuple[tuple[str, int, int, bool], ...]]] = {
    "A100-40GB": (40960, _estimated("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")),
    "A100-80GB": (81920, _estimated("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    "H100-80GB": (81559, (("1g.10gb", 9984, 7, True), ("1g.20gb", 20096, 4, True), ("2g.20gb", 20096, 3, True),
                          ("3g.40gb", 40448, 2, True), ("4g.40gb", 40448, 1, True), ("7g.80gb", 81152, 1, True))),
    "H200-141GB": (143771, _estimated("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")),
}


def board_targets(board: str, *, mig: bool = True) -> list[Target]:
    """The whole board, then its MIG profiles (smallest first)."""
    if board not in BOARDS:
        raise ModelConfigError(f"unknown GPU {board!r}; known: {', '.join(BOARDS)}")
    whole_mib, profiles = BOARDS[board]
    out = [Target(board, whole_mib * MIB, board)]
    if mig:
        out += [Target(f"{board} {name}", mib * MIB, board, name, count, measured)
                for name, mib, count, measured in profiles]
    return out


def board_of(device_name: str | None) -> str | None:
    """The catalogue board of an NVML device name ("NVIDIA H100 80GB HBM3" -> "H100-80GB")."""
    n = (device_name or "").upper()
    if "H200" in n:
        return "H200-141GB"
    if "H100" in n:
        return None if ("94GB" in n or "NVL" in n or "96GB" in n) else "H100-80GB"
    if "A100" in n:
        return "A100-80GB" if "80GB" in n else "A100-40GB"
    return None
