"""Model configurations for the tests. The hub is unreachable, so the public configs are written out here.

Tiny random configs build in milliseconds; the real-size ones (BERT_BASE_CASED, ...) are meant for the `meta`
device only (parameter counting, no memory).
"""
import transformers as T

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64)

# https://huggingface.co/bert-base-cased/blob/main/config.json
BERT_BASE_CASED = dict(
    vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
)
# https://huggingface.co/bert-large-cased/blob/main/config.json
BERT_LARGE_CASED = dict(BERT_BASE_CASED, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096)
# https://huggingface.co/roberta-base/blob/main/config.json
ROBERTA_BASE = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
    type_vocab_size=1, initializer_range=0.02, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)


def tiny_bert(**kw):
    return T.BertConfig(**{**TINY, **kw})


def tiny_roberta(**kw):
    return T.RobertaConfig(**{**TINY, "pad_token_id": 1, "type_vocab_size": 1, **kw})


def tiny_distilbert(**kw):
    return T.DistilBertConfig(**{"vocab_size": 100, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37,
                                 "max_position_embeddings": 64, **kw})


def tiny_deberta_v2(**kw):
    return T.DebertaV2Config(**{**TINY, **kw})


def tiny_albert(**kw):
    """A layout no naming scheme covers (ALBERT's shared layer groups): only `--bias-terms all` works on it."""
    return T.AlbertConfig(**{**TINY, "embedding_size": 16, **kw})
