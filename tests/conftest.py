"""Shared pytest fixtures. Keep each one small; tests must stay fast (seconds) on 2 shared CPU cores."""
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_GLUE_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "glue")  # small MNLI and QQP files (official layout)

_TINY_WORDS = ("the a an man woman is are playing plays cat dog sat on mat . , ? ! not did sit "
               "someone something good bad movie film it was very").split()


@pytest.fixture
def glue_dir():
    """The real GLUE files: $GLUE_DIR (CI sets ../shared/glue), else <repo root>/../shared/glue. Read-only."""
    path = os.environ.get("GLUE_DIR") or os.path.join(REPO_ROOT, "..", "shared", "glue")
    return os.path.abspath(path)


@pytest.fixture
def fixture_glue_dir():
    """tests/fixtures/glue: a few rows of MNLI and QQP (absent from the real data) in the exact GLUE layout."""
    return FIXTURE_GLUE_DIR


def make_tiny_tokenizer(token_type_ids=True):
    """A WordPiece tokenizer over ~30 words (no files, no hub). token_type_ids=False mimics RoBERTa's outputs."""
    from transformers import BertTokenizer
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_TINY_WORDS])}
    kwargs = {} if token_type_ids else {"model_input_names": ["input_ids", "attention_mask"]}
    return BertTokenizer(vocab=vocab, **kwargs)


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_tokenizer_no_segments():
    return make_tiny_tokenizer(token_type_ids=False)


# ---------------------------------------------------------------------------------------------- tiny runs of the CLI

def write_tiny_rte(root, n_train=64, n_dev=24, n_test=16, seed=0):
    """An RTE folder in the official layout with tiny-vocabulary sentences and a learnable rule:
    sentence2 containing 'not' -> not_entailment."""
    import random
    rng = random.Random(seed)
    words = [w for w in _TINY_WORDS if w not in ("not", ".", ",", "?", "!")]
    os.makedirs(os.path.join(root, "RTE"), exist_ok=True)

    def rows(n, labelled):
        out = []
        for i in range(n):
            s1 = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + " ."
            neg = rng.random() < 0.5
            s2 = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
            s2 = (s2 + " not ." if neg else s2 + " .")
            out.append([str(i), s1, s2] + ([("not_entailment" if neg else "entailment")] if labelled else []))
        return out

    for split, n, labelled in [("train", n_train, True), ("dev", n_dev, True), ("test", n_test, False)]:
        header = ["index", "sentence1", "sentence2"] + (["label"] if labelled else [])
        with open(os.path.join(root, "RTE", f"{split}.tsv"), "w", encoding="utf-8") as f:
            for r in [header] + rows(n, labelled):
                f.write("\t".join(r) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random BERT saved as a plain Hugging Face folder (config + safetensors + tokenizer), like a hub model."""
    import torch
    from transformers import BertConfig, BertModel
    path = str(tmp_path_factory.mktemp("tiny_bert"))
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(1234)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory):
    return write_tiny_rte(str(tmp_path_factory.mktemp("tiny_glue")))
