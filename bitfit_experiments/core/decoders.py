"""Decoder-only models (GPT-2, BLOOM, OPT, GPT-NeoX/Pythia, Qwen2, LLaMA, ...): the pad token their heads need.

A decoder's ...ForSequenceClassification classifies from the rightmost token that is not `config.pad_token_id`
(found from input_ids alone), and refuses batches of more than one example when the config has no pad id. Many
decoders ship without one (GPT-2, Pythia, Qwen2's config). `pair_pad_token` gives the tokenizer and the model one and
the same pad id:

  1. the tokenizer's pad token, if it has one (collate pads with it, so the head must skip exactly that id);
  2. else the model config's pad_token_id, if the tokenizer knows that id;
  3. else the tokenizer's EOS token (GPT-2 and Pythia: <|endoftext|>).

Why pad = EOS is safe with our right padding: the rightmost non-pad token is the example's last token, unless the
example itself ends with EOS tokens. The head then reads the token just before them, and since a decoder is causal
the hidden state there is exactly the one of the example without its trailing EOS tokens: trailing EOS tokens are
ignored, nothing else changes. An EOS token inside a text is not trailing and changes nothing. (The tokenizers of
these families add no EOS to GLUE inputs, so in practice no example ends with one.)

Layer: core.
"""
from .errors import UsageError


def pair_pad_token(tokenizer, model=None):
    """Give `tokenizer` a pad token if it has none (rules above) and set the same id as model.config.pad_token_id.
    Returns the pad id. An encoder's tokenizer and config already agree, so for them nothing changes."""
    if tokenizer.pad_token_id is None:
        config_pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        known = config_pad is not None and 0 <= config_pad < len(tokenizer)
        token = tokenizer.convert_ids_to_tokens(config_pad) if known else tokenizer.eos_token
        if token is None:
            raise UsageError("the tokenizer has neither a pad nor an EOS token, so a classifier cannot tell padding "
                             "from text; add a pad token (tokenizer.add_special_tokens({'pad_token': ...})) and save "
                             "the tokenizer with the model")
        tokenizer.pad_token = token
    if model is not None and getattr(model.config, "pad_token_id", None) != tokenizer.pad_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer.pad_token_id
