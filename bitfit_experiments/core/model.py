"""Load the encoder, its tokenizer and a fresh classification head for a GLUE task.

`--model-name` is any Hugging Face id or a local directory; we read the architecture from what loads and never look
at the name. Remote code is never enabled: a model that needs `trust_remote_code` is refused by transformers.

Layer: core.
"""
import logging
import os
import platform
import resource
import sys
import warnings

import torch

from .errors import UsageError, first_line
from .identity import model_identity  # noqa: F401 (re-exported: the run layer imports it with the loaders)


def _looks_like_path(name):
    # A hub id is "name" or "org/name"; anything else that is not an existing folder is a mistyped path.
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def check_model_name(name):
    """Fail early (before any output is written) on a local path that does not exist."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise UsageError(f"--model-name {name}: the directory has no config.json; point it at a Hugging Face model "
                             f"folder (config.json + weights + tokenizer files)")
        return expanded
    if _looks_like_path(name) or os.path.exists(expanded):
        raise UsageError(f"--model-name {name}: no such model directory; pass an existing local folder or a "
                         f"Hugging Face hub id such as bert-base-cased")
    return name


# Files that hold a tokenizer's vocabulary. Without one, AutoTokenizer quietly builds a tokenizer that knows only
# the special tokens, and every word becomes [UNK].
_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                "tokenizer.model", "spm.model", "bpe.codes")


def load_tokenizer(name):
    from transformers import AutoTokenizer
    path = check_model_name(name)
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in _VOCAB_FILES):
        raise UsageError(f"--model-name {name}: the folder has no tokenizer files ({', '.join(_VOCAB_FILES[:3])}, "
                         f"...), so every word would become [UNK]; save the model's tokenizer into it "
                         f"(tokenizer.save_pretrained)")
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # network, missing files, unknown architecture
        raise UsageError(f"could not load the tokenizer of '{name}' ({type(e).__name__}: {first_line(e)}); "
                         f"use a local model directory or check the hub id and your connection") from None
    _check_vocabulary(name, path, tokenizer)
    return tokenizer


def _check_vocabulary(name, path, tokenizer):
    """Refuse a tokenizer that knows no words, or ids beyond the model's embedding table (an IndexError in the
    first batch otherwise)."""
    vocab = tokenizer.get_vocab()
    if not set(vocab) - set(tokenizer.all_special_tokens):
        raise UsageError(f"--model-name {name}: its tokenizer has only special tokens ({len(vocab)}), so every word "
                         f"would become [UNK]; the model folder lacks its vocabulary -- save the model's tokenizer "
                         f"into it")
    try:
        from transformers import AutoConfig
        embeddings = getattr(AutoConfig.from_pretrained(path), "vocab_size", None)
    except Exception:
        return  # load_model reports an unreadable config
    largest = max(vocab.values())
    if embeddings and largest >= embeddings:
        raise UsageError(f"--model-name {name}: the tokenizer has token ids up to {largest}, but config.json's "
                         f"vocab_size is {embeddings}; the tokenizer belongs to another model -- use the tokenizer "
                         f"files saved with these weights")


def load_model(name, task, dtype=torch.float32, allow_weight_mismatch=False):
    """A sequence-classification model with the task's labels; the head is initialised from the global torch RNG,
    so it follows the run's seed (call after seeding).

    Weights of the encoder that the checkpoint lacks (or holds but the model has no place for) mean config.json does
    not describe the weights: training would start from random tensors. That is an error unless
    `allow_weight_mismatch` (run_glue's --allow-weight-mismatch). Expected and always fine: the task head (new), a
    pretraining head in the checkpoint (cls.*, lm_head.*: unused), and the pooler either way (some checkpoints have
    none; a fresh one is drawn and carried by the task pack)."""
    from transformers import AutoModelForSequenceClassification
    path = check_model_name(name)
    kwargs = dict(num_labels=task.num_labels, torch_dtype=dtype)
    if task.label_names:
        kwargs["id2label"] = dict(enumerate(task.label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(task.label_names)}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    try:
        # transformers reports the freshly initialised head as "missing weights": expected here, so keep it quiet.
        with _quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True, **kwargs)
    except Exception as e:
        fix = ("check that config.json describes these weights and that no file is truncated" if os.path.isdir(path)
               else "use a local model directory or check the hub id and your connection")
        raise UsageError(f"could not load model '{name}' ({type(e).__name__}: {first_line(e)}); {fix}") from None
    if not allow_weight_mismatch:
        _check_weights_match(name, model, info)
    # Parameters the checkpoint lacks (the head, sometimes a pooler) were drawn at random: task packs must carry them.
    model.newly_initialized = tuple(info.get("missing_keys", ()))
    return model


def _check_weights_match(name, model, info):
    problem = weight_mismatch(model, info)
    if problem:
        raise UsageError(f"--model-name {name}: config.json does not match the weights ({problem}); training would "
                         f"start from random tensors -- fix config.json (model_type, num_hidden_layers, ...) or pass "
                         f"--allow-weight-mismatch to train anyway")


def weight_mismatch(model, info):
    """A short description of how config.json and the loaded checkpoint disagree, or None if they agree."""
    base = model.base_model
    prefix = model.base_model_prefix + "."
    children = {n for n, _ in base.named_children()}

    def in_encoder(key):  # a checkpoint key of the base model, saved with or without its prefix ("bert.")
        return key.removeprefix(prefix).split(".")[0] in children

    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(prefix) and not _is_pooler(k))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if in_encoder(k) and not _is_pooler(k))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) of the model are not in the checkpoint, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} encoder weight(s) of the checkpoint are unused, e.g. {unexpected[0]}")
    if mismatched:
        parts.append(f"{len(mismatched)} weight(s) have another shape, e.g. {mismatched[0]}")
    declared = _declared_model_type(model.config)
    if declared and declared != model.config.model_type:
        parts.append(f"config.json says model_type {model.config.model_type!r} but names the architecture "
                     f"{model.config.architectures[0]} ({declared})")
    return "; ".join(parts) or None


def _is_pooler(key):
    return "pooler" in key.split(".")


def _declared_model_type(config):
    """The model_type of the class in config.json's `architectures` (what save_pretrained recorded), if known."""
    import transformers
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs and isinstance(archs[0], str) else None
    return getattr(getattr(cls, "config_class", None), "model_type", None)


class _quiet_transformers:
    def __enter__(self):
        self.logger = logging.getLogger("transformers")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        try:
            from transformers.utils import logging as hf_logging
            self.hf_level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except Exception:
            self.hf_level = None
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.logger.setLevel(self.level)
        if self.hf_level is not None:
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity(self.hf_level)
            hf_logging.enable_progress_bar()
        return False


def resolve_device(gpu_device):
    """--gpu-device N -> cuda:N (checked); absent -> CPU."""
    if gpu_device is None:
        return torch.device("cpu")
    if gpu_device < 0:
        raise UsageError(f"--gpu-device {gpu_device}: a GPU index is >= 0; omit the flag to run on the CPU")
    if not torch.cuda.is_available():
        raise UsageError(f"--gpu-device {gpu_device}: no CUDA GPU is available on this machine; omit --gpu-device "
                         f"to run on the CPU")
    if gpu_device >= torch.cuda.device_count():
        raise UsageError(f"--gpu-device {gpu_device}: this machine has {torch.cuda.device_count()} GPU(s) "
                         f"(0..{torch.cuda.device_count() - 1}); pick one of those")
    return torch.device(f"cuda:{gpu_device}")


def cpu_numerics():
    """What decides the last digits of a CPU run, recorded in config.json: the CPU, the ATen code path in use, and
    MKL's reproducibility mode (see --cpu-numerics)."""
    name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return {"model": name, "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "MKL_CBWR": os.environ.get("MKL_CBWR"), "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY")}


def peak_memory_mb(device):
    """Peak memory of this process so far: the GPU's max_memory_allocated on CUDA, else the resident-set peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
