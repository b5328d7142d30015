"""LoRA and IA3 (`--fine-tune-type lora | ia3 | bitfit_lora`), built on peft and measured in the same harness.

Layer: core. The adapters are injected in place (`peft.inject_adapter_in_model`): the model stays the same
`...ForSequenceClassification` class, with the same head and `base_model`, so selection, the training loop, the
checkpoint, packs and the metrics treat it like every other run. A wrapped module's own weight and bias move under
`<module>.base_layer.`; `canonical_name` maps such a name back to the plain model's, which is what bias families,
packs and exports are keyed by.

Targets are named by family, as `--bias-terms` names biases (query, key, value, attention_output, intermediate,
output), and mapped to modules from parameter names with the naming schemes of selection.py -- never from the
model's name. IA3 uses peft's defaults for the architecture (its target and feed-forward modules per model type).
"""
import re

from .errors import UsageError

from .config import ADAPTER_TYPES, LORA_TARGETS  # noqa: F401  (the vocabulary lives in config)
ADAPTER_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "ia3_l")


def canonical_name(name):
    """The plain model's name of a parameter of an adapter-wrapped model ('...query.base_layer.bias' ->
    '...query.bias')."""
    return name.replace(".base_layer.", ".")


def is_adapter_param(name):
    return any(f".{m}." in f".{name}." for m in ADAPTER_MARKERS)


def target_modules(model, families):
    """Full module names of the Linear layers of each target family, e.g. 'bert.encoder.layer.3.attention.self.query'
    for `query`. The family's bias suffix in the model's naming scheme, without '.bias', is the module suffix."""
    from .selection import FUSED_QKV, NAMING_SCHEMES, QKV_FAMILIES, naming_scheme
    scheme = naming_scheme(model)
    if scheme is None:
        raise UsageError("--lora-targets: this model's parameter names match no known naming scheme "
                         f"({', '.join(NAMING_SCHEMES)}); LoRA targets cannot be mapped on this architecture")
    qkv = [f for f in families if f in QKV_FAMILIES]
    if scheme in FUSED_QKV and qkv:
        if set(qkv) != set(QKV_FAMILIES):  # one fused projection: a LoRA on it adapts q, k and v together
            raise UsageError(f"--lora-targets {' '.join(qkv)}: this model computes query, key and value in one fused "
                             f"projection, so LoRA cannot adapt {' and '.join(qkv)} alone; pass --lora-targets query "
                             f"key value (one LoRA on the fused projection)")
        families = [f for f in families if f not in ("key", "value")]  # the fused module, once
    modules = [name for name, _ in model.named_modules()]
    out = []
    for fam in families:
        suffix = NAMING_SCHEMES[scheme][fam].removesuffix(".bias")
        pattern = re.compile(r"(?:^|\.)\d+\." + re.escape(suffix) + "$")
        hits = [m for m in modules if pattern.search(m)]
        if not hits:
            raise UsageError(f"--lora-targets {fam}: this model has no {fam} projection ({scheme} names "
                             f"'<layer>.{suffix}'); choose among {', '.join(LORA_TARGETS)} that it has")
        out += hits
    return out


def spec(config):
    """What a pack must record to rebuild the run's adapters on a fresh base (None for the other types)."""
    if config.fine_tune_type not in ADAPTER_TYPES:
        return None
    if config.fine_tune_type == "ia3":
        return {"type": "ia3"}
    return {"type": config.fine_tune_type, "r": config.lora_r, "alpha": config.lora_alpha,
            "dropout": config.lora_dropout, "targets": list(config.lora_targets)}


def spec_config(adapter_spec):
    """The inverse of `spec`: an object `inject` reads."""
    from types import SimpleNamespace
    s = adapter_spec
    return SimpleNamespace(fine_tune_type=s["type"], lora_r=s.get("r"), lora_alpha=s.get("alpha"),
                           lora_dropout=s.get("dropout"), lora_targets=s.get("targets"))


def inject(model, config):
    """Add the run's adapters to `model` in place (before training; after the head was initialised, so the head
    draws the same random numbers as every other type). LoRA's A matrices draw from the seeded torch RNG."""
    from peft import LoraConfig, inject_adapter_in_model
    if config.fine_tune_type in ("lora", "bitfit_lora"):
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=target_modules(model, config.lora_targets), bias="none")
    else:
        peft_config = _ia3_config(model)
    inject_adapter_in_model(peft_config, model)
    return model


def _ia3_config(model):
    from peft import IA3Config
    from peft.utils import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
                            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS)
    kind = getattr(model.config, "model_type", None)
    if kind not in TARGETS:
        raise UsageError(f"--fine-tune-type ia3: peft has no default IA3 modules for model type {kind!r}; use lora "
                         f"or bitfit on this architecture")
    return IA3Config(target_modules=TARGETS[kind], feedforward_modules=FEEDFORWARD[kind])


def merge_and_unload(model):
    """Fold every adapter into its base layer's weights and put the plain layer back: the result is an ordinary
    transformers model (no peft module left), for `predict --export`."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model
