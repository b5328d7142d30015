"""Tiny decoder configs of each family and a tiny word-level tokenizer without a pad token, built in the test (the hub
is unreachable, and no real decoder weights can be had here). Real-size configs are written out for `meta`-device
parameter counting only."""
import transformers as T

H, LAYERS, HEADS, INNER, VOCAB = 32, 2, 2, 37, 64
WORDS = ("the a an cat dog man woman sat sits on mat . , ? ! not good bad movie was very is it what capital of "
         "france paris give three tips human assistant : write poem about sea translate sentence into french "
         "morning how are you yes no").split()


def tiny(family, **kw):
    """A tiny random config of `family` (hidden 32, 2 layers, 2 heads, MLP 37 where the family lets us set it)."""
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    cfgs = {
        "gpt2": lambda: T.GPT2Config(n_embd=H, n_layer=LAYERS, n_head=HEADS, n_inner=INNER, n_positions=128, **common),
        "bloom": lambda: T.BloomConfig(hidden_size=H, n_layer=LAYERS, n_head=HEADS, **common),  # MLP = 4 * hidden
        "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                            intermediate_size=INNER, max_position_embeddings=128, **common),
        "opt": lambda: T.OPTConfig(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=INNER,
                                   max_position_embeddings=128, word_embed_proj_dim=H, pad_token_id=1, **common),
        "qwen2": lambda: T.Qwen2Config(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                       num_key_value_heads=1, intermediate_size=INNER, max_position_embeddings=128,
                                       **common),  # grouped-query attention: k and v are half as wide as q
        "llama": lambda: T.LlamaConfig(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                       intermediate_size=INNER, max_position_embeddings=128, **common),
        "mistral": lambda: T.MistralConfig(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                           num_key_value_heads=1, intermediate_size=INNER,
                                           max_position_embeddings=128, **common),
    }
    cfg = cfgs[family]()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def make_decoder_tokenizer(pad=False):
    """Lower-cased word-level tokenizer: <|endoftext|> (id 0) is BOS/EOS, <unk> id 1, no pad token (as GPT-2 and
    Pythia) unless `pad` (then <pad> is id 2). Pairs are concatenated without a separator, as GPT-2's tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<unk>"] + (["<pad>"] if pad else [])
    vocab = {t: i for i, t in enumerate(specials + list(WORDS))}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<unk>", **kwargs)


def random_biases(model):
    """Fresh configs start with zero biases; pretrained ones are not zero. Without this, weight decay could not move
    a frozen bias entry (0 stays 0), and a test of MaskGuard's restore would pass without it."""
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def save_decoder(path, family, cls, seed=1234, **kw):
    """A tiny random model of `family` (class `cls`, e.g. AutoModelForCausalLM; biases not zero) + the tokenizer, as
    a hub-style folder."""
    import torch
    torch.manual_seed(seed)
    random_biases(cls.from_config(tiny(family, **kw))).save_pretrained(path)
    make_decoder_tokenizer().save_pretrained(path)
    return str(path)


# Real-size configs (from the models' config.json on the hub), for counting on the meta device.
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)  # gpt2
BLOOMZ_1B1 = dict(vocab_size=250880, hidden_size=1536, n_layer=24, n_head=16)  # bigscience/bloomz-1b1
PYTHIA_160M = dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, max_position_embeddings=2048, rotary_pct=0.25)  # EleutherAI/pythia-160m
OPT_125M = dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                max_position_embeddings=2048, word_embed_proj_dim=768, pad_token_id=1)  # facebook/opt-125m
QWEN2_05B = dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                 tie_word_embeddings=True)  # Qwen/Qwen2-0.5B
