"""Tiny randomly initialised models of every supported family, saved with save_pretrained (no weights
can be downloaded here), each with a tokenizer trained offline on a few lines: a WordPiece one with a
mask token for the encoders, a byte-level BPE one with neither pad nor mask token for the decoders
(as GPT-2's and Llama's have none), so the real from_pretrained path and the pad-token handling run."""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The cat sat on the mat.", "A cat is sitting.", "It rained all day long in the city.", "Sunny.",
    "a fine, moving film", "a dull and tiresome mess", "the quick brown fox jumps over the lazy dog",
    "an honest, funny and warm story", "nothing works in this film", "a short probe sentence",
    "another, somewhat longer probe sentence for the check", "and its second part", "second",
]

H, F, L, HEADS = 32, 48, 2, 2     # hidden size, FFN width, blocks, attention heads

ENCODERS = ("bert", "distilbert", "deberta-v2", "electra", "xlm-roberta", "modernbert")
DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gemma", "phi", "phi3")
FAMILIES = ENCODERS + DECODERS


def _encoder_tokenizer(path: Path):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS * 4, vocab_size=300, min_frequency=1,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    path.mkdir(parents=True, exist_ok=True)
    wp.save_model(str(path))
    return BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)


def _decoder_tokenizer(path: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    path.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(path))
    tok = GPT2TokenizerFast.from_pretrained(str(path))   # reads the vocab.json + merges.txt just written
    assert tok.pad_token is None and tok.mask_token is None
    return tok


def _config(family: str, tok):
    import transformers as T

    vocab = len(tok)
    dec = dict(num_hidden_layers=L, hidden_size=H, intermediate_size=F, num_attention_heads=HEADS,
               vocab_size=vocab, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=None)
    enc = dict(num_hidden_layers=L, hidden_size=H, intermediate_size=F, num_attention_heads=HEADS,
               vocab_size=vocab, pad_token_id=tok.pad_token_id)
    if family == "bert":
        return T.BertConfig(**enc, max_position_embeddings=128)
    if family == "distilbert":
        return T.DistilBertConfig(n_layers=L, dim=H, hidden_dim=F, n_heads=HEADS, vocab_size=vocab,
                                  pad_token_id=tok.pad_token_id, max_position_embeddings=128)
    if family == "deberta-v2":
        return T.DebertaV2Config(**enc, max_position_embeddings=128, relative_attention=True, position_buckets=16,
                                 pos_att_type=["p2c", "c2p"], position_biased_input=False, share_att_key=True,
                                 norm_rel_ebd="layer_norm")   # DeBERTa-v3's settings
    if family == "electra":   # embedding width != hidden size: the embeddings are projected
        return T.ElectraConfig(**enc, embedding_size=16, max_position_embeddings=128)
    if family == "xlm-roberta":
        return T.XLMRobertaConfig(**enc, max_position_embeddings=130, type_vocab_size=2)
    if family == "modernbert":
        return T.ModernBertConfig(**enc, max_position_embeddings=128, bos_token_id=tok.cls_token_id,
                                  eos_token_id=tok.sep_token_id, cls_token_id=tok.cls_token_id,
                                  sep_token_id=tok.sep_token_id, global_attn_every_n_layers=1)
    if family == "gpt2":
        return T.GPT2Config(n_layer=L, n_embd=H, n_inner=F, n_head=HEADS, vocab_size=vocab, n_positions=128,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if family == "llama":
        return T.LlamaConfig(**dec, num_key_value_heads=1)
    if family == "qwen2":
        return T.Qwen2Config(**dec, num_key_value_heads=1)
    if family == "mistral":
        return T.MistralConfig(**dec, num_key_value_heads=1)
    if family == "gemma":
        return T.GemmaConfig(**dec, num_key_value_heads=1, head_dim=H // HEADS)
    if family == "phi":
        return T.PhiConfig(**dec)
    if family == "phi3":
        return T.Phi3Config(**dec, num_key_value_heads=1)
    raise ValueError(family)


def tiny_model(family: str, root: Path) -> Path:
    """root/<family>: a tiny random `family` model (AutoModel weights) and its tokenizer."""
    from transformers import AutoModel

    path = Path(root) / family
    if (path / "config.json").is_file():
        return path
    tok = (_encoder_tokenizer if family in ENCODERS else _decoder_tokenizer)(path / "tokenizer_src")
    tok.save_pretrained(str(path))
    torch.manual_seed(0)
    model = AutoModel.from_config(_config(family, tok))
    with torch.no_grad():   # non-zero biases everywhere, so a lost or misplaced bias shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(str(path))
    return path
