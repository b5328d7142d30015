"""Checks of a task pack's manifest: against itself, against the pack's tensors, and against the base it is applied to.

pack.safetensors is covered by the sha256 in the manifest; the manifest itself is plain JSON that anyone can edit.
So every field that decides what gets applied or how outputs are labelled is checked before it is used: a wrong task,
num_labels, label names, max_seq_length, shape or fix-up count is a one-line UsageError, never a traceback or a
silently wrong prediction. Fields that only describe the run (dev_metrics, versions, bytes) are not checked.

Layer: artifacts.
"""
import math

import torch

from ..core import data
from ..core.errors import UsageError
from ..core.selection import split_base_head

KINDS = {"full": ("full",), "delta": ("delta",), "sparse": ("index", "value")}  # kind -> safetensors key prefixes
MIN_SEQ_LENGTH = 8  # run_glue.py's smallest --max-seq-length


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fail(where, what, fix):
    raise UsageError(f"{where}: {what}; {fix}")


# ---------------------------------------------------------------------------------------------- the manifest alone

def check_manifest(manifest, where, fix):
    """The manifest's own fields; returns the task's TaskSpec."""
    task = manifest["task"]
    if not isinstance(task, str) or task not in data.TASKS:
        _fail(where, f"task {task!r} is not a GLUE task (one of {', '.join(sorted(data.TASKS))})", fix)
    spec = data.TASKS[task]
    _check_labels(manifest, spec, where, fix)
    length = manifest.get("max_seq_length")
    if length is not None and not (_is_count(length) and length >= MIN_SEQ_LENGTH):
        _fail(where, f"max_seq_length {length!r} is not a whole number >= {MIN_SEQ_LENGTH}", fix)
    if not (isinstance(manifest["base_hash"], str) and manifest["base_hash"].startswith("sha256:")):
        _fail(where, f"base_hash {manifest['base_hash']!r} is not a sha256 hash", fix)
    for key in ("base_model", "fine_tune_type"):
        if not isinstance(manifest[key], str):
            _fail(where, f"{key} {manifest[key]!r} is not a string", fix)
    excludes = manifest.get("hash_excludes", [])
    if not (isinstance(excludes, list) and all(isinstance(n, str) for n in excludes)):
        _fail(where, f"hash_excludes {excludes!r} is not a list of tensor names", fix)
    _check_adapter(manifest.get("adapter"), where, fix)
    table = manifest["tensors"]
    if not (isinstance(table, dict) and table):
        _fail(where, "'tensors' is not a table of tensor entries", fix)
    for name, entry in table.items():
        _check_entry(name, entry, where, fix)
    return spec


def _check_adapter(adapter, where, fix):
    """A LoRA / IA3 pack records how to rebuild its adapters; every field must be one the run could have had."""
    if adapter is None:
        return
    from ..core.config import ADAPTER_TYPES, LORA_TARGETS
    if not isinstance(adapter, dict) or adapter.get("type") not in ADAPTER_TYPES:
        _fail(where, f"adapter {adapter!r} is not one of {', '.join(ADAPTER_TYPES)}", fix)
    if adapter["type"] == "ia3":
        return
    r, alpha, dropout, targets = (adapter.get(k) for k in ("r", "alpha", "dropout", "targets"))
    ok = (_is_count(r) and r >= 1 and isinstance(alpha, (int, float)) and alpha > 0
          and isinstance(dropout, (int, float)) and 0 <= dropout < 1 and isinstance(targets, list) and targets
          and all(t in LORA_TARGETS for t in targets))
    if not ok:
        _fail(where, f"adapter {adapter!r} has an invalid r, alpha, dropout or targets", fix)


def _check_labels(manifest, spec, where, fix):
    """num_labels, label_names and problem_type must be the task's: they name the predictions and size the head."""
    n = manifest["num_labels"]
    if not _is_count(n) or n != spec.num_labels:
        _fail(where, f"num_labels {n!r} does not fit task {spec.name}, which has {spec.num_labels}", fix)
    expected = list(spec.label_names) if spec.label_names else None
    names = manifest.get("label_names")
    if names is not None and names != expected:  # absent: an unnamed pack; predictions are written as 0, 1, ...
        _fail(where, f"label_names {names!r} are not the labels of {spec.name} ({expected!r}); predictions would be "
                     f"named wrongly", fix)
    problem = "regression" if spec.is_regression else None
    if manifest.get("problem_type", problem) != problem:
        _fail(where, f"problem_type {manifest['problem_type']!r} does not fit task {spec.name} ({problem!r})", fix)


def _check_entry(name, entry, where, fix):
    if not isinstance(entry, dict):
        _fail(where, f"tensor {name}: its entry is not an object", fix)
    kind = entry.get("kind")
    if kind not in KINDS:
        _fail(where, f"tensor {name} has unknown kind {kind!r}", fix)
    shape = entry.get("shape")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        _fail(where, f"tensor {name}: shape {shape!r} is not a list of sizes", fix)
    if kind == "delta" and not _is_count(entry.get("fixups", 0)):
        _fail(where, f"tensor {name}: fixups {entry.get('fixups')!r} is not a count", fix)


def expected_keys(manifest):
    """The safetensors keys the manifest's table calls for."""
    keys = {f"{prefix}/{name}" for name, e in manifest["tensors"].items() for prefix in KINDS[e["kind"]]}
    if fixup_total(manifest):
        keys |= {"fixups/index", "fixups/value"}
    return keys


def fixup_total(manifest):
    return sum(e.get("fixups", 0) for e in manifest["tensors"].values() if e["kind"] == "delta")


# ---------------------------------------------------------------------------------------------- manifest vs tensors

def check_tensors(manifest, tensors, where, fix):
    """Shapes, indices and fix-up counts of pack.safetensors against the manifest's table (keys already match)."""
    total = fixup_total(manifest)
    if total:
        index, value = tensors["fixups/index"], tensors["fixups/value"]
        if not (index.dim() == value.dim() == 1 and len(index) == len(value) == total and _is_int_tensor(index)):
            _fail(where, f"the fix-ups hold {len(index)} indices and {len(value)} values, the manifest counts "
                         f"{total}", fix)
    start = 0
    for name, entry in manifest["tensors"].items():
        numel = math.prod(entry["shape"])
        if entry["kind"] == "sparse":
            _check_sparse(name, tensors[f"index/{name}"], tensors[f"value/{name}"], numel, where, fix)
            continue
        stored = tensors[f"{entry['kind']}/{name}"]
        if list(stored.shape) != entry["shape"]:
            _fail(where, f"tensor {name}: the manifest says shape {entry['shape']}, the file holds "
                         f"{list(stored.shape)}", fix)
        count = entry.get("fixups", 0) if entry["kind"] == "delta" else 0
        if count:
            _check_indices(name, tensors["fixups/index"][start:start + count], numel, "fix-up", where, fix)
            start += count


def _is_int_tensor(t):
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_sparse(name, index, value, numel, where, fix):
    if not (index.dim() == value.dim() == 1 and len(index) == len(value) and _is_int_tensor(index)):
        _fail(where, f"tensor {name}: {len(index)} sparse indices for {len(value)} values", fix)
    _check_indices(name, index, numel, "sparse", where, fix)


def _check_indices(name, index, numel, what, where, fix):
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= numel):
        _fail(where, f"tensor {name}: {what} indices reach outside its {numel} entries", fix)


# ---------------------------------------------------------------------------------------------- manifest vs base

def check_fits(model, pack):
    """Before anything is changed: every tensor the pack names exists in `model` with the manifest's shape, and the
    pack carries the whole task head, sized for the manifest's num_labels (else a random head would predict)."""
    m = pack.manifest
    where, fix = f"pack {pack.directory}", f"load the base model the pack was trained on ({m['base_model']})"
    state = model.state_dict()
    _, head_names = split_base_head(model)
    table = m["tensors"]
    for name, entry in table.items():
        if name not in state:
            _fail(where, f"it changes {name}, which this model does not have", fix)
        if name not in head_names and list(state[name].shape) != entry["shape"]:
            _fail(where, f"its {name} has shape {entry['shape']}, the base's {list(state[name].shape)}", fix)
    missing = [n for n in head_names if table.get(n, {}).get("kind") != "full"]
    if missing:
        _fail(where, f"it lacks the task head ({missing[0]}), so predictions would come from a random head",
              "re-run the training or copy the pack folder again")
    output_layer = head_names[-1].rpartition(".")[0]  # the Linear whose rows are the labels
    for name in head_names:
        want = list(state[name].shape)
        if name.rpartition(".")[0] == output_layer:
            want[0] = m["num_labels"]
        if table[name]["shape"] != want:
            _fail(where, f"its head tensor {name} has shape {table[name]['shape']}, expected {want} for "
                         f"{m['num_labels']} label(s) on this base", fix)
    _check_fixups_belong(state, pack, where)


def _check_fixups_belong(state, pack, where):
    """Each tensor's fix-ups correct a rounding of b_0 + delta, so each lies within a few ulps of that sum. The
    manifest's per-tensor counts say which fix-up belongs to which tensor; an edited count hands one tensor's
    entries to another, which this catches (the values are then far from the sums they would replace)."""
    t, start = pack.tensors, 0
    for name, entry in pack.manifest["tensors"].items():
        count = entry.get("fixups", 0) if entry["kind"] == "delta" else 0
        if not count:
            continue
        base = state[name].detach().to("cpu").reshape(-1)
        idx = t["fixups/index"][start:start + count].long()
        value = t["fixups/value"][start:start + count].float()
        start += count
        summed = (base[idx].float() + t[f"delta/{name}"].reshape(-1)[idx].float()).to(base.dtype).float()
        info = torch.finfo(base.dtype)
        slack = 4 * info.eps * (base[idx].float().abs() + value.abs()) + info.tiny
        if bool(((value - summed).abs() > slack).any()):
            _fail(where, f"the fix-ups the manifest assigns to {name} do not belong to it (the per-tensor "
                         f"'fixups' counts were edited)", "re-run the training or copy the pack folder again")


def check_max_seq_length(pack, model, tokenizer, base_name):
    """The manifest's max_seq_length must fit the base's position embeddings (longer inputs would index past them)."""
    length = pack.manifest.get("max_seq_length") or 128
    limit = min(getattr(model.config, "max_position_embeddings", None) or 10**9,
                getattr(tokenizer, "model_max_length", None) or 10**9)
    if length > limit:
        _fail(f"pack {pack.directory}", f"max_seq_length {length} exceeds the {limit} positions of base {base_name}",
              "re-run the training or copy the pack folder again")
