"""Task packs: only what training changed, applied onto a freshly loaded base model.

BitFit's practical promise is that a task costs a few hundred kilobytes on top of one shared base model. After
training, a run writes `<run>/pack/`:

    pack.safetensors   the changed tensors, by kind (per tensor name):
                         full/<name>                      the whole tensor (the head; every tensor for full_ft)
                         delta/<name>                     b_f - b_0 of a fully trainable base tensor (bitfit biases,
                                                          rand_row_col LayerNorm gains) in float32
                         fixups/index, fixups/value       exactness fix-ups of all delta tensors, concatenated in
                                                          manifest order (each tensor's count is in the manifest)
                         index/<name>, value/<name>       the trained entries of a masked tensor (rand_uniform,
                                                          rand_row_col), flat indices and their final values
    manifest.json      format tag + version, base model id/path and a hash of its weights, fine-tune type, bias
                       terms, task, label names, parameter counts, bytes, the run's dev metrics, the tensor table

Exactness: in float32, b_0 + fl(b_f - b_0) is not always b_f (the subtraction rounds when b_0 and b_f differ in
magnitude or sign). Storing the deltas in float64 would make them exact but doubles the pack, so we keep float32 and
add, per tensor, the few entries whose reconstruction is off as explicit (index, value) fix-ups (pooled into two
tensors: per-tensor entries would cost ~100 header bytes each). apply() therefore
reproduces every trained tensor bit for bit, and the logits equal the in-memory model's.

The head is stored whole, so a reloaded head is the trained one, never a fresh random init. A pack records the hash of
the base weights it was trained on (sha256 over model.base_model's tensors, sorted by name, taken before training) and
refuses any other base.

    snap = packs.snapshot(model, sel)                  # before training
    ...train...
    packs.write_pack(out / "pack", model, snap, sel, base_model=name, task="rte", dev_metrics=...)
    ev = packs.load(base_model_name, out / "pack")     # -> GLUEEvaluator: predict / predict_sentences / evaluate
    sw = packs.PackSwitcher(base_model_name)           # many tasks, one base
    sw.use("runs/rte/pack").predict_sentences(...); sw.use("runs/sst2/pack")...

Layer: artifacts.
"""
import hashlib
import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..core import data
from ..core.errors import UsageError
from . import pack_checks
from .io import atomic_directory, atomic_write_json, new_directory
from ..core import adapters
from ..core.adapters import canonical_name, is_adapter_param
from ..core.selection import base_prefix, split_base_head

FORMAT = "bitfit-glue-pack"
VERSION = 1
TENSORS_FILE = "pack.safetensors"
MANIFEST_FILE = "manifest.json"
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# ---------------------------------------------------------------------------------------------- base identity

def raw_bytes(t):
    """A tensor's bytes as stored (any dtype): what "bit-identical" compares."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def base_hash(model, exclude=()):
    """sha256 over model.base_model's state dict: name, dtype, shape and raw bytes of each tensor, sorted by name.
    The head is not included: it is what a pack replaces. `exclude`: full model names left out (base tensors the
    checkpoint lacks, which every load initialises anew and the pack carries whole). Adapters (LoRA, IA3) are not
    part of the base: their tensors are left out and wrapped layers hashed under their plain names, so a model with
    adapters injected hashes like the plain model it was built on."""
    h = hashlib.sha256()
    state = {canonical_name(n): t for n, t in model.base_model.state_dict().items() if not is_adapter_param(n)}
    prefix = base_prefix(model)
    skip = {canonical_name(n).removeprefix(prefix) for n in exclude}
    for name in sorted(set(state) - skip):
        t = state[name]
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        h.update(raw_bytes(t))
    return "sha256:" + h.hexdigest()


@dataclass
class Snapshot:
    """The model before training: its base hash and the original values of every tensor training can change."""
    base_hash: str
    values: dict  # name -> CPU clone (empty for full_ft, whose pack is the whole state dict)
    newly_initialized: tuple = ()  # base tensors the checkpoint lacked: not hashed, carried whole by the pack


def snapshot(model, selection, newly_initialized=()):
    """Call BEFORE training (after selection.select), on the model as loaded.

    newly_initialized: parameter names that from_pretrained initialised at random because the checkpoint lacks them
    (its `output_loading_info=True` "missing_keys"; typically a pooler). The head is handled anyway; base tensors
    named here are excluded from the base hash and stored whole in the pack, since a fresh load draws them anew."""
    state = model.state_dict()
    _, head = split_base_head(model)
    carry = tuple(sorted(n for n in newly_initialized if n in state and n not in set(head)))
    keep = [] if selection.fine_tune_type == "full_ft" else selection.trainable
    return Snapshot(base_hash(model, carry), {n: state[n].detach().to("cpu").clone() for n in keep}, carry)


# ---------------------------------------------------------------------------------------------- building a pack

def _same_bits(a, b):
    """Elementwise bit equality (0.0 vs -0.0 and NaN payloads count as different, as they would in a hash)."""
    if a.dtype.is_floating_point:
        return a.view(_INT_OF_SIZE[a.element_size()]) == b.view(_INT_OF_SIZE[b.element_size()])
    return a == b


def _index_dtype(numel):
    return torch.int32 if numel < 2**31 else torch.int64


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def build_pack(model, snap, selection):
    """(tensors for pack.safetensors, the manifest's tensor table) -- what training changed, by kind."""
    state = model.state_dict()  # read lazily below: only the changed tensors are copied to the CPU
    _, head_names = split_base_head(model)
    head = set(head_names)
    full_ft = selection.fine_tune_type == "full_ft"
    names = list(state) if full_ft else list(dict.fromkeys([*selection.trainable, *snap.newly_initialized]))
    carry = set(snap.newly_initialized)
    tensors, table, fix_index, fix_value = {}, {}, [], []
    for name in names:
        cur = state[name].detach().to("cpu")
        entry = {"shape": list(cur.shape), "dtype": _dtype_name(cur.dtype)}
        if full_ft or name in head or name in carry or is_adapter_param(name):  # adapters have no base value
            entry["kind"] = "full"
            tensors[f"full/{name}"] = cur.clone().contiguous()
        elif name in selection.masks:
            entry["kind"] = "sparse"
            flat, orig = cur.reshape(-1), snap.values[name].reshape(-1)
            mask = selection.masks[name].to("cpu").reshape(-1)
            # An entry outside the mask that moved would be lost from the pack silently: refuse instead.
            if not bool(_same_bits(flat[~mask], orig[~mask]).all()):
                raise RuntimeError(f"{name}: entries outside the trainable mask changed during training "
                                   f"(MaskGuard not used?); the pack cannot represent that")
            idx = mask.nonzero().squeeze(1)
            tensors[f"index/{name}"] = idx.to(_index_dtype(flat.numel()))
            tensors[f"value/{name}"] = flat[idx].clone()
        else:
            entry["kind"] = "delta"
            orig = snap.values[name]
            delta = cur.float() - orig.float()
            recon = (orig.float() + delta).to(cur.dtype)
            bad = (~_same_bits(recon.reshape(-1), cur.reshape(-1))).nonzero().squeeze(1)
            tensors[f"delta/{name}"] = delta.contiguous()
            entry["fixups"] = int(bad.numel())
            fix_index.append(bad)
            fix_value.append(cur.reshape(-1)[bad])
        table[name] = entry
    if any(len(i) for i in fix_index):
        index = torch.cat(fix_index)  # positions within each tensor, so 32 bits suffice for any bias
        tensors["fixups/index"] = index.to(_index_dtype(int(index.max()) + 1))
        tensors["fixups/value"] = torch.cat(fix_value)  # promotes mixed dtypes losslessly
    return tensors, table


def _trained_count(model, selection):
    state = model.state_dict()
    return sum(int(selection.masks[n].sum()) if n in selection.masks else state[n].numel()
               for n in (state if selection.fine_tune_type == "full_ft" else selection.trainable))


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_pack(directory, model, snap, selection, *, base_model, task, label_names=None, fine_tune_type=None,
               bias_terms=None, dev_metrics=None, max_seq_length=None, extra=None):
    """Write <directory>/pack.safetensors + manifest.json atomically (built in a temporary sibling folder, then
    renamed into place). Returns the manifest (pack_bytes, full_model_bytes, ratio, ...). max_seq_length: the run's
    (default 128, or fewer if the model has fewer positions); readers refuse one the base cannot embed."""
    from importlib.metadata import version
    from safetensors.torch import save_file
    spec = data.get_task(task) if isinstance(task, str) else task
    label_names = list(spec.label_names) if label_names is None and spec.label_names else label_names
    positions = getattr(model.config, "max_position_embeddings", None) or 128
    max_seq_length = min(128, positions) if max_seq_length is None else max_seq_length
    if max_seq_length > positions:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's {positions} positions")
    tensors, table = build_pack(model, snap, selection)
    state = model.state_dict()
    full_bytes = sum(t.numel() * t.element_size() for t in state.values())

    with atomic_directory(directory) as tmp:
        tensor_path = os.path.join(tmp, TENSORS_FILE)
        save_file(tensors, tensor_path, metadata={"format": f"{FORMAT}/{VERSION}"})
        pack_bytes = os.path.getsize(tensor_path)
        manifest = {
            "format": FORMAT, "version": VERSION,
            "base_model": os.fspath(base_model), "base_hash": snap.base_hash,
            "hash_excludes": list(snap.newly_initialized),
            "fine_tune_type": fine_tune_type or selection.fine_tune_type,
            "bias_terms": list(bias_terms if bias_terms is not None else selection.bias_terms),
            "task": spec.name, "label_names": label_names, "num_labels": spec.num_labels,
            "problem_type": "regression" if spec.is_regression else None,
            "max_seq_length": max_seq_length,
            "trained_params": _trained_count(model, selection),
            "stored_values": sum(t.numel() for t in tensors.values()),
            "fixups": sum(e.get("fixups", 0) for e in table.values()),
            "pack_bytes": pack_bytes, "pack_sha256": _file_sha256(tensor_path),
            # the whole model's weights (base + head) as model.safetensors stores them, minus its small header
            "full_model_bytes": full_bytes, "ratio_to_full_model": pack_bytes / full_bytes,
            "dev_metrics": dev_metrics,
            "versions": {lib: version(lib) for lib in ("torch", "transformers", "safetensors")},
            "tensors": table,
            **(extra or {}),
        }
        atomic_write_json(os.path.join(tmp, MANIFEST_FILE), manifest)
    return manifest


def format_summary(manifest):
    """One line for the run's log: what the pack holds and what it costs next to the full model."""
    return (f"task pack: {manifest['pack_bytes'] / 1e3:,.1f} kB ({manifest['stored_values']:,} values, "
            f"{manifest['fixups']} exactness fix-ups) = {100 * manifest['ratio_to_full_model']:.3f}% of the full "
            f"model's {manifest['full_model_bytes'] / 1e6:,.1f} MB")


# ---------------------------------------------------------------------------------------------- reading a pack

@dataclass
class Pack:
    directory: str
    manifest: dict
    tensors: dict  # safetensors key -> CPU tensor


# pack_sha256 too: without it an edited pack.safetensors would go unnoticed (every pack of this version has it).
_REQUIRED = ("base_model", "base_hash", "fine_tune_type", "task", "num_labels", "tensors", "pack_sha256")
_REDO = "re-run the training or copy the pack folder again"


def read_pack(directory):
    """Read and check a pack folder: the manifest's fields, then its tensors against it (pack_checks). Every
    problem with it is a one-line UsageError."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise UsageError(f"--pack {directory}: no such directory; pass the 'pack' folder written beside a run")
    mpath, tpath = os.path.join(directory, MANIFEST_FILE), os.path.join(directory, TENSORS_FILE)
    manifest = _read_manifest(directory, mpath)
    tensors = _read_tensors(directory, tpath, manifest)
    if pack_checks.expected_keys(manifest) != set(tensors):
        odd = sorted(pack_checks.expected_keys(manifest) ^ set(tensors))
        raise UsageError(f"{tpath} does not match its manifest ({len(odd)} tensor(s) differ, e.g. {odd[0]}); {_REDO}")
    pack_checks.check_tensors(manifest, tensors, mpath, _REDO)
    return Pack(directory, manifest, tensors)


def _read_manifest(directory, mpath):
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{directory} is not a task pack (no {MANIFEST_FILE}); pass the 'pack' folder of a run") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{mpath} is corrupt (not valid JSON); {_REDO}") from None
    except OSError as e:  # permission denied, a directory of that name, ...
        raise UsageError(f"cannot read {mpath} ({e.strerror or type(e).__name__}); make it readable or "
                         f"{_REDO}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{mpath} is not a bitfit-glue task pack manifest (format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r}); {_REDO}")
    if manifest.get("version") != VERSION:
        raise UsageError(f"{mpath} has pack version {manifest.get('version')!r}; this bitfit-glue reads version "
                         f"{VERSION} -- use the bitfit-glue version that wrote it")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise UsageError(f"{mpath} lacks {', '.join(missing)}; the manifest is damaged -- {_REDO}")
    pack_checks.check_manifest(manifest, mpath, _REDO)
    return manifest


def _read_tensors(directory, tpath, manifest):
    from safetensors.torch import load as load_bytes
    try:
        with open(tpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UsageError(f"{directory} has no {TENSORS_FILE}; the pack is incomplete -- {_REDO}") from None
    except OSError as e:
        raise UsageError(f"cannot read {tpath} ({e.strerror or type(e).__name__}); make it readable or "
                         f"{_REDO}") from None
    if hashlib.sha256(raw).hexdigest() != manifest["pack_sha256"]:
        raise UsageError(f"{tpath} is corrupt or truncated ({len(raw):,} bytes, sha256 differs from the "
                         f"manifest's); {_REDO}")
    try:
        return load_bytes(raw)
    except Exception as e:
        raise UsageError(f"{tpath} is not a readable safetensors file ({type(e).__name__}); {_REDO}") from None


def _as_pack(pack):
    return pack if isinstance(pack, Pack) else read_pack(pack)


# ---------------------------------------------------------------------------------------------- applying a pack

def check_base(pack, model_hash, base_name=None):
    m = pack.manifest
    if model_hash != m["base_hash"]:
        this = f"{base_name} " if base_name else ""
        raise UsageError(f"pack {pack.directory} was trained on base {m['base_model']} (hash "
                         f"{m['base_hash'].removeprefix('sha256:')[:12]}); this base {this}has hash "
                         f"{model_hash.removeprefix('sha256:')[:12]} -- load the matching base model "
                         f"(--base {m['base_model']})")


def _owner(model, name):
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name) if module_name else model, attr


def _set_full(model, name, value, is_head):
    """Copy `value` into the tensor `name`; a head tensor of another shape (another task's label count) is
    replaced, and the Linear layer holding it is told its new size."""
    module, attr = _owner(model, name)
    target = getattr(module, attr)
    if target.shape == value.shape:
        target.copy_(value)
        return
    if not is_head:
        raise UsageError(f"the pack's {name} has shape {list(value.shape)}, the base's {list(target.shape)}; "
                         f"load the base model the pack was trained on")
    new = value.to(device=target.device, dtype=target.dtype).clone()
    if isinstance(target, nn.Parameter):
        new = nn.Parameter(new, requires_grad=target.requires_grad)
    setattr(module, attr, new)
    if isinstance(module, nn.Linear) and attr == "weight":
        module.out_features, module.in_features = new.shape


def _set_labels(model, manifest):
    """The config a fresh load_model() for this task would have (labels, regression or not)."""
    n, names = manifest["num_labels"], manifest.get("label_names")
    cfg = model.config
    cfg.id2label = dict(enumerate(names)) if names else {i: f"LABEL_{i}" for i in range(n)}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    cfg.problem_type = manifest.get("problem_type")
    if hasattr(model, "num_labels"):
        model.num_labels = n


@torch.no_grad()
def apply_pack(model, pack, *, model_hash=None, base_name=None, saved=None):
    """Apply a pack onto a model holding its base weights. Refuses a base with another hash (model_hash: a
    precomputed base_hash(model), to skip hashing again). `saved`, if a dict, receives what is overwritten so
    that restore() can undo it exactly."""
    pack = _as_pack(pack)
    excludes = pack.manifest.get("hash_excludes", [])
    check_base(pack, base_hash(model, excludes) if model_hash is None else model_hash, base_name)
    pack_checks.check_fits(model, pack)  # all of it fits, or nothing is changed
    state = model.state_dict()
    head = set(split_base_head(model)[1])
    fix_start = 0  # the pooled fix-ups are consumed in manifest order
    for name, entry in pack.manifest["tensors"].items():
        fix_start = _apply_tensor(model, state[name], pack.tensors, name, entry, name in head, saved, fix_start)
    _set_labels(model, pack.manifest)
    return model


def _apply_tensor(model, target, t, name, entry, is_head, saved, fix_start):
    """Apply one manifest entry onto `target` (the model's tensor); returns where the next fix-ups start."""
    kind = entry["kind"]
    if kind == "full":
        if saved is not None:
            saved[name] = ("full", target.clone())
        _set_full(model, name, t[f"full/{name}"], is_head)
        return fix_start
    flat = target.view(-1)
    if kind == "sparse":
        idx = t[f"index/{name}"].to(device=target.device, dtype=torch.long)
        if saved is not None:
            saved[name] = ("sparse", idx, flat[idx].clone())
        flat[idx] = t[f"value/{name}"].to(target.device, target.dtype)
        return fix_start
    # delta: b_0 + delta in float32, then the exactness fix-ups
    if saved is not None:
        saved[name] = ("full", target.clone())
    target.copy_((target.float() + t[f"delta/{name}"].to(target.device)).to(target.dtype))
    n = entry.get("fixups", 0)
    if n:
        part = slice(fix_start, fix_start + n)
        idx = t["fixups/index"][part].to(device=target.device, dtype=torch.long)
        flat[idx] = t["fixups/value"][part].to(target.device, target.dtype)
    return fix_start + n


@torch.no_grad()
def restore(model, saved):
    """Undo apply_pack(..., saved=saved): every overwritten value goes back, bit for bit."""
    _, head_names = split_base_head(model)
    head = set(head_names)
    state = model.state_dict()
    for name, item in saved.items():
        if item[0] == "full":
            _set_full(model, name, item[1], name in head)
        else:
            _, idx, values = item
            state[name].view(-1)[idx] = values
    saved.clear()


# ---------------------------------------------------------------------------------------------- load and predict

def load_base(base_model, pack, device="cpu"):
    """A freshly loaded base model with the pack's task head shape (random head, replaced by apply_pack).

    A config/weights mismatch is not refused here: the pack's base hash (over every tensor the checkpoint holds)
    and the tensors it carries whole already pin down the exact model it was trained on, so a run made with
    --allow-weight-mismatch stays usable, and any other base is refused by the hash."""
    from ..core.model import load_model
    manifest = _as_pack(pack).manifest
    model = load_model(base_model, data.get_task(manifest["task"]), allow_weight_mismatch=True)
    if manifest.get("adapter"):  # LoRA / IA3: the same adapters, then the pack sets their trained values
        adapters.inject(model, adapters.spec_config(manifest["adapter"]))
    return model.to(device)


class PackSwitcher:
    """Many tasks, one base: load the base model and tokenizer once, then switch packs. Each switch first undoes the
    previous pack exactly, so after any number of switches the model equals a fresh base with the current pack
    applied, bit for bit. The base hash is computed once (the restored base is the same bits)."""

    def __init__(self, base_model, device="cpu"):
        self.base_model, self.device = os.fspath(base_model), torch.device(device)
        self.model = self.tokenizer = self.current = self.adapter = None
        self._hashes = {}  # hash_excludes -> base hash of the model as loaded (restore() keeps it that way)
        self._saved = {}

    def use(self, pack):
        """Switch to `pack` (folder or Pack); returns a GLUEEvaluator for its task sharing this model."""
        from .evaluator import GLUEEvaluator
        from ..core.decoders import pair_pad_token
        from ..core.model import load_tokenizer
        pack = _as_pack(pack)
        if self.model is not None and pack.manifest.get("adapter") != self.adapter:
            self.model = None  # another adapter shape (or none): start from a fresh base
            self._hashes, self._saved, self.current = {}, {}, None
        if self.model is None:
            self.adapter = pack.manifest.get("adapter")
            self.tokenizer = load_tokenizer(self.base_model)
            self.model = load_base(self.base_model, pack, self.device)
            pair_pad_token(self.tokenizer, self.model)  # as in training: a decoder's head needs the pad id
            self.model.eval()
        excludes = tuple(pack.manifest.get("hash_excludes", []))
        if excludes not in self._hashes:  # hash the base as loaded, then put the current pack back
            current, self.current = self.current, None
            restore(self.model, self._saved)
            self._hashes[excludes] = base_hash(self.model, excludes)
            if current is not None:
                self._apply(current)
        check_base(pack, self._hashes[excludes], self.base_model)  # a refusal leaves the current pack in place
        pack_checks.check_max_seq_length(pack, self.model, self.tokenizer, self.base_model)
        restore(self.model, self._saved)
        self.current = None
        self._apply(pack)
        m = pack.manifest
        return GLUEEvaluator(self.model, self.tokenizer, m["task"], config={"pack": _summary_fields(m)},
                             max_seq_length=m.get("max_seq_length") or 128)

    def _apply(self, pack):
        excludes = tuple(pack.manifest.get("hash_excludes", []))
        apply_pack(self.model, pack, model_hash=self._hashes[excludes], base_name=self.base_model, saved=self._saved)
        self.current = pack


def _summary_fields(manifest):
    return {k: v for k, v in manifest.items() if k != "tensors"}


def load(base_model, pack, device="cpu"):
    """The base with the pack applied, as a GLUEEvaluator (predict, predict_sentences, evaluate, save)."""
    return PackSwitcher(base_model, device).use(pack)


def export(evaluator, directory, flag="--export"):
    """A standard Hugging Face model folder (weights + config with labels + tokenizer) that plain
    AutoModelForSequenceClassification.from_pretrained loads; evaluator.json beside them lets
    GLUEEvaluator.load read it too. `directory` must be new or empty: nothing already there is replaced.
    LoRA / IA3 adapters are merged into the weights first, so the folder needs no peft to load."""
    if any(is_adapter_param(n) for n, _ in evaluator.model.named_parameters()):
        adapters.merge_and_unload(evaluator.model)
    with new_directory(directory, flag) as built:
        evaluator.save(built)
    return os.fspath(directory)
