"""GLUEEvaluator: a trained model for one GLUE task that can predict, evaluate, save and load itself.

Saved as a plain folder -- `model.safetensors` + the Hugging Face config + the tokenizer files + `evaluator.json`
(task, metric history, run config) -- so loading never unpickles anything (pickle can run arbitrary code).

    from bitfit_experiments.artifacts.evaluator import GLUEEvaluator
    ev = GLUEEvaluator.load("out/evaluator")
    ev.predict_sentences([("A man is playing.", "Someone plays.")])   # -> logits
    ev.evaluate(load_split("rte", "dev", glue_dir))                  # -> {"accuracy": ...}

Layer: artifacts.
"""
import copy
import json
import os

import pandas as pd
import torch

from ..core import data, metrics
from ..core.batching import encode
from ..core.adapters import is_adapter_param, merge_and_unload
from ..core.errors import UsageError, first_line
from .io import atomic_directory, atomic_write_json
from ..core.trainer import predict_logits

FORMAT = "bitfit-glue-evaluator/1"


class GLUEEvaluator:
    def __init__(self, model, tokenizer, task, config=None, history=None, max_seq_length=128):
        self.model = model
        self.tokenizer = tokenizer
        self.task = data.get_task(task) if isinstance(task, str) else task
        self.config = config or {}
        self.history = history or []
        self.max_seq_length = max_seq_length

    @property
    def device(self):
        return next(self.model.parameters()).device

    def predict(self, df, batch_size=64, precision="fp32", progress=False):
        """Logits (n, num_labels) for a DataFrame in load_split's format (text_a, text_b)."""
        enc = encode(self.tokenizer, df, self.max_seq_length)
        return predict_logits(self.model, enc, batch_size=batch_size, device=self.device,
                              pad_token_id=self.tokenizer.pad_token_id, precision=precision, progress=progress)

    def predict_sentences(self, sentences, **kwargs):
        """Logits for raw inputs: a list of strings, or of (sentence1, sentence2) pairs for pair tasks."""
        pairs = [s if isinstance(s, (tuple, list)) else (s, None) for s in sentences]
        df = pd.DataFrame({"idx": range(len(pairs)), "text_a": [a for a, _ in pairs],
                           "text_b": [b for _, b in pairs], "label": -1})
        if df["text_b"].isna().all():
            df["text_b"] = None
        return self.predict(df, **kwargs)

    def evaluate(self, df, **kwargs):
        logits = self.predict(df, **kwargs)
        preds = metrics.logits_to_predictions(self.task.name, logits)
        return metrics.compute_metrics(self.task.name, preds, df["label"].to_numpy())

    def save(self, directory):
        """Write the evaluator folder atomically: built in a temporary sibling, then renamed into place. A model with
        LoRA / IA3 adapters is saved merged (a copy; this model keeps its adapters), as a plain transformers model."""
        model = self.model
        if any(is_adapter_param(n) for n, _ in model.named_parameters()):
            model = merge_and_unload(copy.deepcopy(model))
        with atomic_directory(directory) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            atomic_write_json(os.path.join(tmp, "evaluator.json"), {
                "format": FORMAT, "task": self.task.name, "max_seq_length": self.max_seq_length,
                "config": self.config, "history": self.history})
        return directory

    @classmethod
    def load(cls, directory, device="cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        meta_path = os.path.join(directory, "evaluator.json")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            raise UsageError(f"{directory} is not a saved evaluator (no evaluator.json); pass the 'evaluator' folder "
                             f"written by run_glue.py --save-evaluator") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{meta_path} is corrupt (not valid JSON); re-run the training with --save-evaluator") from None
        if not isinstance(meta, dict):
            raise UsageError(f"{meta_path} is corrupt (not a JSON object); re-run the training with --save-evaluator")
        if meta.get("format") != FORMAT:
            raise UsageError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}; it was not written "
                             f"by this version of bitfit-glue")
        if "task" not in meta:
            raise UsageError(f"{meta_path} lacks the task name; the file is damaged -- re-run the training with "
                             f"--save-evaluator")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(directory, torch_dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(directory)
        except Exception as e:
            raise UsageError(f"could not load the evaluator in {directory} ({type(e).__name__}: "
                             f"{first_line(e)}); the folder is "
                             f"damaged or incomplete -- re-run the training with --save-evaluator") from None
        model.to(device)
        return cls(model, tokenizer, meta["task"], meta.get("config"), meta.get("history"), meta.get("max_seq_length", 128))
