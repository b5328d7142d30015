"""Packs of an instruction-tuned causal LM: what training changed (BitFit: the bias deltas), applied onto its base.

Layer: artifacts. The tensors are the GLUE task pack's (packs.build_pack: `delta/` for fully trained biases with
their exactness fix-ups, `index/` + `value/` for a masked fused q/k/v bias, `full/` for full_ft), so a pack still
reproduces every trained tensor bit for bit. Only the manifest differs: a causal LM has no task, labels or task head,
so it is its own format, `bitfit-glue-lm-pack`, which the GLUE readers refuse and this module reads:

    pack = read_lm_pack("out/pack")
    model = load_causal_lm(pack.manifest["base_model"]); apply_lm_pack(model, pack)   # = the trained model
"""
import hashlib
import json
import os

import torch

from ..core.errors import UsageError
from . import pack_checks, packs
from .io import atomic_directory, atomic_write_json

FORMAT = "bitfit-glue-lm-pack"
VERSION = 1
_REQUIRED = ("base_model", "base_hash", "fine_tune_type", "tensors", "pack_sha256")
_REDO = "re-run the training or copy the pack folder again"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_lm_pack(directory, model, snap, selection, *, base_model, extra=None):
    """Write <directory>/pack.safetensors + manifest.json atomically; returns the manifest."""
    from importlib.metadata import version
    from safetensors.torch import save_file
    tensors, table = packs.build_pack(model, snap, selection)
    full_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with atomic_directory(directory) as tmp:
        tensor_path = os.path.join(tmp, packs.TENSORS_FILE)
        save_file(tensors, tensor_path, metadata={"format": f"{FORMAT}/{VERSION}"})
        pack_bytes = os.path.getsize(tensor_path)
        manifest = {
            "format": FORMAT, "version": VERSION, "base_model": os.fspath(base_model), "base_hash": snap.base_hash,
            "hash_excludes": list(snap.newly_initialized), "fine_tune_type": selection.fine_tune_type,
            "bias_terms": list(selection.bias_terms),
            "trained_params": sum(int(selection.masks[n].sum()) if n in selection.masks else
                                  dict(model.named_parameters())[n].numel() for n in selection.trainable),
            "stored_values": sum(t.numel() for t in tensors.values()),
            "fixups": sum(e.get("fixups", 0) for e in table.values()),
            "pack_bytes": pack_bytes, "pack_sha256": _sha256(tensor_path),
            "full_model_bytes": full_bytes, "ratio_to_full_model": pack_bytes / full_bytes,
            "versions": {lib: version(lib) for lib in ("torch", "transformers", "safetensors")},
            "tensors": table, **(extra or {}),
        }
        atomic_write_json(os.path.join(tmp, packs.MANIFEST_FILE), manifest)
    return manifest


def read_lm_pack(directory):
    """Read and check an LM pack folder (manifest fields, tensor file hash, tensors against the table)."""
    from safetensors.torch import load as load_bytes
    directory = os.fspath(directory)
    mpath, tpath = os.path.join(directory, packs.MANIFEST_FILE), os.path.join(directory, packs.TENSORS_FILE)
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
        with open(tpath, "rb") as f:
            raw = f.read()
    except (OSError, ValueError) as e:
        raise UsageError(f"{directory} is not a readable LM pack ({type(e).__name__}); {_REDO}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UsageError(f"{mpath} is not a {FORMAT} manifest of version {VERSION}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise UsageError(f"{mpath} lacks {', '.join(missing)}; {_REDO}")
    if hashlib.sha256(raw).hexdigest() != manifest["pack_sha256"]:
        raise UsageError(f"{tpath} is corrupt or truncated (sha256 differs from the manifest's); {_REDO}")
    tensors = load_bytes(raw)
    for name, entry in manifest["tensors"].items():
        pack_checks._check_entry(name, entry, mpath, _REDO)
    if pack_checks.expected_keys(manifest) != set(tensors):
        raise UsageError(f"{tpath} does not match its manifest; {_REDO}")
    pack_checks.check_tensors(manifest, tensors, mpath, _REDO)
    return packs.Pack(directory, manifest, tensors)


@torch.no_grad()
def apply_lm_pack(model, pack):
    """Apply a pack onto the causal LM it was trained from (its base hash is checked first); returns the model."""
    pack = pack if isinstance(pack, packs.Pack) else read_lm_pack(pack)
    packs.check_base(pack, packs.base_hash(model, pack.manifest.get("hash_excludes", [])))
    state = model.state_dict()
    for name, entry in pack.manifest["tensors"].items():
        if name not in state or list(state[name].shape) != entry["shape"]:
            raise UsageError(f"pack {pack.directory} changes {name} {entry['shape']}, which this model does not "
                             f"have in that shape; load the base model it was trained on")
    fix_start = 0  # the pooled fix-ups are consumed in manifest order (as packs.apply_pack does)
    for name, entry in pack.manifest["tensors"].items():
        fix_start = packs._apply_tensor(model, state[name], pack.tensors, name, entry, False, None, fix_start)
    return model
