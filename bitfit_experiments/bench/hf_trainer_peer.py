"""The peer of the speed comparison: BitFit the usual Hugging Face way, with `transformers.Trainer`.

    python -m bitfit_experiments.bench.hf_trainer_peer -t cola -m MODEL --data-dir $GLUE_DIR [--train-size 2000]

What a user who knows only Hugging Face writes: AutoModelForSequenceClassification, requires_grad only on the bias
terms and the classification head, a `datasets.Dataset` tokenized with `map` (truncation to 128, no padding),
DataCollatorWithPadding, and Trainer with its defaults except: batch size, learning rate (1e-3), epochs, a constant
learning rate (the BitFit recipe's), seed 0, no evaluation during training and one dev evaluation at the end
(per_device_eval_batch_size stays at Trainer's default 8), no checkpoints (save_strategy="no"), report_to=[],
dataloader_num_workers=0, use_cpu when there is no GPU, no progress bars. The OpenMP environment is left as the
user has it (the usual way sets nothing).

Nothing of this project's training loop is used (that is what it is compared with): only the GLUE file reader and
the seeded subset (core/data.py), so both train on exactly the same examples, and the metric definitions
(core/metrics.py). It prints one line `PEER_RESULT {json}`: training-phase seconds (trainer.train), evaluation
seconds, the dev metric, the mean training loss, the trainable-parameter count and the real (non-padding) training
tokens.

Layer: bench.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from ..core.errors import OneLineParser


def bitfit_the_usual_way(model):
    """requires_grad only on bias terms and the task head (everything outside the base model); -> trainable count."""
    prefix = model.base_model_prefix
    for name, param in model.named_parameters():
        param.requires_grad = "bias" in name.split(".")[-1] or name.split(".")[0] != prefix
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_examples(task, data_dir, train_size, seed):
    """(train, dev) as column dicts text_a / text_b / label: the same files and seeded subset as run_glue.py."""
    from ..core import data
    spec = data.get_task(task)
    train = data.subsample(data.load_split(spec.name, "train", data_dir), train_size, seed)
    dev = data.load_split(spec.name, spec.eval_splits[0], data_dir)
    as_dict = lambda df: {"text_a": [str(t) for t in df["text_a"]], "text_b": list(df["text_b"]),
                          "label": df["label"].tolist()}
    return spec, as_dict(train), as_dict(dev)


def tokenized(tokenizer, columns, max_length=128):
    """A datasets.Dataset tokenized with map (batched), truncation only: padding is the collator's job."""
    import datasets
    datasets.disable_progress_bars()
    pair = any(t is not None for t in columns["text_b"])
    if pair:
        columns = dict(columns, text_b=["" if t is None else str(t) for t in columns["text_b"]])

    def tok(batch):
        return tokenizer(batch["text_a"], batch["text_b"] if pair else None, truncation=True, max_length=max_length)

    return datasets.Dataset.from_dict(columns).map(tok, batched=True, remove_columns=["text_a", "text_b"])


def train_and_evaluate(args):
    """The whole peer run; -> its result dict."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)
    from transformers.utils import logging as hf_logging
    from ..core import metrics
    hf_logging.set_verbosity_error()
    spec, train_cols, dev_cols = load_examples(args.task, args.data_dir, args.train_size, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_ds, dev_ds = tokenized(tokenizer, train_cols), tokenized(tokenizer, dev_cols)
    set_seed(args.seed)
    kw = {"problem_type": "regression"} if spec.is_regression else {}
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=spec.num_labels, **kw)
    trainable = bitfit_the_usual_way(model)
    scratch = tempfile.mkdtemp(prefix="hf_trainer_peer_")
    training_args = TrainingArguments(
        output_dir=scratch, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        num_train_epochs=args.epochs, lr_scheduler_type="constant", seed=args.seed, eval_strategy="no",
        save_strategy="no", report_to=[], dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    start = time.perf_counter()
    train_loss = trainer.train().training_loss  # the mean over every training step
    train_sec = time.perf_counter() - start
    start = time.perf_counter()
    out = trainer.predict(dev_ds)
    eval_sec = time.perf_counter() - start
    shutil.rmtree(scratch, ignore_errors=True)
    preds = metrics.logits_to_predictions(spec.name, out.predictions)
    dev = metrics.compute_metrics(spec.name, preds, out.label_ids)[spec.headline]
    return {"task": spec.name, "train_examples": len(train_ds), "trainable_params": trainable,
            "train_sec": train_sec, "eval_sec": eval_sec, "dev": dev, "dev_metric_name": spec.headline,
            "train_loss": train_loss,
            "real_train_tokens": int(sum(len(x) for x in train_ds["input_ids"])), "threads": torch.get_num_threads(),
            "omp_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                        if k in os.environ}}


def _parser():
    p = OneLineParser(prog="python -m bitfit_experiments.bench.hf_trainer_peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-t", "--task", required=True, help="GLUE task")
    p.add_argument("-m", "--model", required=True, help="encoder directory or hub id")
    p.add_argument("--data-dir", required=True, help="local GLUE files in the original layout")
    p.add_argument("--train-size", type=int, default=None, help="the same seeded training subset as run_glue.py's")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="training batch size")
    p.add_argument("-l", "--learning-rate", type=float, default=1e-3, help="constant learning rate")
    p.add_argument("-e", "--epochs", type=float, default=1, help="training epochs")
    p.add_argument("-s", "--seed", type=int, default=0, help="seed of Trainer and of the subset")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    result = train_and_evaluate(args)
    print("PEER_RESULT " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
