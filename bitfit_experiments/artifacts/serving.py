"""Many tasks from one base in one batch: bias-only task packs (bitfit, frozen) as the members of a bias bank.

Requests of different tasks share a batch. Each banked bias module adds the row of the request's task, and each
task's head reads only its own rows (core/bank.py). The predictions are those of each pack applied alone (as
`packs.load` or `PackSwitcher` apply it), up to float rounding. Packs that change weight matrices (full_ft, the
random baselines, LoRA/IA3) cannot share a batch this way: serve them one at a time.

Layer: artifacts.
"""
import copy

import numpy as np
import torch

from ..core import data
from ..core.bank import BiasBank, head_modules, new_member
from ..core.batching import Encoded, collate, encode
from ..core.bank_train import stack_batches
from ..core.errors import UsageError
from ..core.selection import split_base_head
from ..core.trainer import to_device
from .packs import PackSwitcher, _as_pack, restore

BANKABLE = ("bitfit", "frozen")


class MixedTaskServer:
    """Load the base once, one member per pack (keyed by its task); `predict(rows)` serves any mix of tasks."""

    def __init__(self, base_model, pack_dirs, device="cpu"):
        self.switcher = PackSwitcher(base_model, device)
        self.tasks, members, self.specs = [], [], {}
        for given in pack_dirs:
            pack = _as_pack(given)
            m, d = pack.manifest, pack.directory
            if m.get("fine_tune_type") not in BANKABLE or m.get("adapter"):
                raise UsageError(f"--pack {d} is a {m.get('fine_tune_type')} pack; only bias-only packs "
                                 f"({', '.join(BANKABLE)}) can share a batch -- serve it alone with one --pack")
            task = data.get_task(m["task"]).name
            if task in self.specs:
                raise UsageError(f"--pack {d}: two packs for task {task}; the rows name their task, so give one "
                                 f"pack per task")
            members.append(self._member(pack, d))
            self.tasks.append(task)
            self.specs[task] = {"max_seq_length": m.get("max_seq_length") or 128, "labels": m.get("label_names"),
                                "num_labels": members[-1].extra["num_labels"]}
        model = self.switcher.model
        restore(model, self.switcher._saved)  # the base as loaded (biases and head come from the members)
        self.switcher.current = None
        self.model, self.tokenizer = model, self.switcher.tokenizer
        self.bank = BiasBank(model, members, trainable=False)
        self.device = torch.device(device)

    def _member(self, pack, where):
        """The pack applied alone, captured as a bank member: its bias values and a copy of its head."""
        self.switcher.use(pack)
        model = self.switcher.model
        base_names = set(split_base_head(model)[0])
        changed = [n for n in pack.manifest["tensors"] if n in base_names]
        weights = [n for n in changed if not n.endswith("bias")]
        if weights:
            raise UsageError(f"--pack {where} changes {weights[0]}, not only biases; serve it alone with one --pack")
        member = new_member(model, changed, {p: copy.deepcopy(model.get_submodule(p)) for p in head_modules(model)},
                            name=pack.manifest["task"])
        member.extra["num_labels"] = int(model.config.num_labels)
        return member

    def encode(self, rows):
        """rows: [(task, sentence1, sentence2 or None)] -> one Encoded, in row order (each task's max length)."""
        ids, types, index = [None] * len(rows), [None] * len(rows), {}
        for i, (task, _, _) in enumerate(rows):
            if task not in self.specs:
                raise UsageError(f"row {i + 1} names task {task!r}, but no --pack is for it; the packs are for "
                                 f"{', '.join(self.tasks)}")
            index.setdefault(task, []).append(i)
        for task, where in index.items():
            frame = _frame([rows[i] for i in where])
            enc = encode(self.tokenizer, frame, self.specs[task]["max_seq_length"])
            for j, i in enumerate(where):
                ids[i] = enc.input_ids[j]
                types[i] = enc.token_type_ids[j] if enc.token_type_ids is not None else None
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        has_types = all(t is not None for t in types)
        return Encoded(ids, types if has_types else None, torch.full((len(rows),), -1, dtype=torch.long), lengths)

    @torch.no_grad()
    def predict(self, rows, batch_size=64, joint=None):
        """[logits of row i (its own task's labels)] in row order; rows of different tasks share each batch.
        joint (default on a GPU): each window in one forward pass; else task group by task group."""
        enc = self.encode(rows)
        member = [self.tasks.index(task) for task, _, _ in rows]
        out = [None] * len(rows)
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(rows), batch_size):
            window = sorted(range(start, min(start + batch_size, len(rows))), key=lambda i: member[i])  # stable
            groups = []
            for i in window:
                if groups and groups[-1][0] == member[i]:
                    groups[-1][1].append(i)
                else:
                    groups.append((member[i], [i]))
            # A GPU serves the window in one pass; the CPU (compute-bound) task group by task group, each padded to
            # its own longest request, with no pack applied or undone in between.
            passes = [groups] if (self.device.type != "cpu" if joint is None else joint) else [[g] for g in groups]
            for part in passes:
                self.bank.route([(k, len(ix)) for k, ix in part])
                batch = to_device(stack_batches([collate(enc, ix, pad) for _, ix in part], pad), self.device)
                batch.pop("labels")
                logits = self.model(**batch).logits.float().cpu()
                for row, i in enumerate(i for _, ix in part for i in ix):
                    out[i] = logits[row, :self.specs[rows[i][0]]["num_labels"]].numpy()
        return out


def _frame(rows):
    import pandas as pd
    pair = any(b is not None for _, _, b in rows)
    return pd.DataFrame({"text_a": [a for _, a, _ in rows],
                         "text_b": [("" if b is None else b) for _, _, b in rows] if pair else [None] * len(rows),
                         "label": -1})
