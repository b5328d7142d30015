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
