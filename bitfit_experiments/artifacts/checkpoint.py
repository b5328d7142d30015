"""Epoch-end checkpoints for --resume: one safetensors file, written atomically, no pickle.

What a run needs to continue exactly where it stopped:
- the trainable tensors only (for BitFit a few hundred KB; the frozen rest is reloaded from the base model),
- the optimizer state (Adam moments and step counts) and the scheduler position,
- the RNG states of python, numpy and torch (dropout), and the epoch and metric history so far.
The data order of epoch e depends only on (seed, e), so it needs no saved state. Tensors go into the safetensors
payload, everything else into its string metadata as JSON.

Layer: artifacts.
"""
import json
import os
import random

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from ..core.errors import UsageError
from .io import atomic_open

FILENAME = "checkpoint.safetensors"
FORMAT = "bitfit-glue-checkpoint/1"


def _rng_state():
    py = random.getstate()
    np_state = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}


def _set_rng_state(state, tensors):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save_checkpoint(out_dir, *, epoch, model, trainable_names, optimizer, scheduler, results):
    params = dict(model.named_parameters())
    tensors = {f"param.{n}": params[n].detach().cpu().contiguous() for n in trainable_names}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {"format": FORMAT, "epoch": epoch, "trainable": trainable_names,
            "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
            "rng": _rng_state(), "results": results}
    payload = save(tensors, metadata={"bitfit_glue": json.dumps(meta)})
    with atomic_open(os.path.join(out_dir, FILENAME), "wb") as f:
        f.write(payload)


def load_checkpoint(out_dir, expected=FORMAT):
    """(metadata, tensors) of the checkpoint in out_dir, or None if there is none. `expected`: its format (a
    single run's, or BANK_FORMAT)."""
    path = os.path.join(out_dir, FILENAME)
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads(f.metadata()["bitfit_glue"])
        tensors = load_file(path)
    except Exception as e:
        raise UsageError(f"{path} is corrupt or truncated ({type(e).__name__}); delete it to restart that run "
                         f"from scratch") from None
    if meta.get("format") != expected:
        raise UsageError(f"{path} was not written by this version of bitfit-glue; delete it to restart the run")
    return meta, tensors


def restore_checkpoint(ckpt, *, model, trainable_names, optimizer, scheduler):
    """Load the trainable tensors, optimizer, scheduler and RNG states; return (epoch, results so far)."""
    meta, tensors = ckpt
    if meta["trainable"] != list(trainable_names):
        # The trainable set is re-derived from the flags (and the seed for random masks): it must be the same.
        raise UsageError("the checkpoint's trainable parameters differ from this run's selection; resume with the "
                         "same --fine-tune-type/--bias-terms/--seed, or start a new output directory")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in trainable_names:
            params[name].copy_(tensors[f"param.{name}"])
    state = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, field = key.split(".", 2)
            state.setdefault(int(idx), {})[field] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(meta["rng"], tensors)
    return meta["epoch"], meta["results"]


def remove_checkpoint(out_dir):
    path = os.path.join(out_dir, FILENAME)
    if os.path.exists(path):
        os.unlink(path)


# ---------------------------------------------------------------------------------------------- bias banks

BANK_FORMAT = "bitfit-glue-bank-checkpoint/2"


def save_bank_checkpoint(bank_dir, *, epoch, bank, optimizer, results):
    """One atomic checkpoint for a whole bias bank (core/bank.py): its stacked tensors (every member's rows and
    head), the optimizer's moments and step count, which members are frozen, each member's record so far and whether
    it failed; one set of RNG states."""
    tensors = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(bank.parameters())}
    tensors.update({f"optim.{k}": t.detach().cpu().contiguous() for k, t in optimizer.state_tensors().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {"format": BANK_FORMAT, "epoch": epoch, "step_count": optimizer.step_count,
            "shapes": [list(p.shape) for p in bank.parameters()],
            "members": [{"name": m.name, "results": r, "failed": m.failed} for m, r in zip(bank.members, results)],
            "rng": _rng_state()}
    payload = save(tensors, metadata={"bitfit_glue": json.dumps(meta)})
    with atomic_open(os.path.join(bank_dir, FILENAME), "wb") as f:
        f.write(payload)


def restore_bank_checkpoint(ckpt, *, bank, optimizer):
    """Load what save_bank_checkpoint wrote; returns (epoch, [record dict per member])."""
    meta, tensors = ckpt
    params = bank.parameters()
    if meta.get("format") != BANK_FORMAT or meta["shapes"] != [list(p.shape) for p in params] \
            or [m["name"] for m in meta["members"]] != [m.name for m in bank.members]:
        raise UsageError("the bank's checkpoint was written for another set of members; delete the bank directory's "
                         "checkpoint.safetensors to restart the bank")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"])
    optimizer.load_state({k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")},
                         meta["step_count"])
    for member, saved in zip(bank.members, meta["members"]):
        member.failed = saved["failed"]
    _set_rng_state(meta["rng"], tensors)
    return meta["epoch"], [saved["results"] for saved in meta["members"]]
