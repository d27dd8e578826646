"""Tiny random models built from configs, so tests never download weights."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "news.csv"
LABELS = ["business", "entertainment", "politics", "sport", "tech"]


def build_tiny_bert(out_dir: str | Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary of the sample data."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    out = Path(out_dir)
    # transformers 5 ignores `vocab_file` here; build the fast tokenizer from the `tokenizers` object.
    wordpiece = BertWordPieceTokenizer(str(ASSETS / "vocab.txt"), lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_gpt2(out_dir: str | Path, texts: list[str], seed: int = 0) -> Path:
    """A 2-layer random GPT-2 with a byte-level BPE trained on `texts` on the fly."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2TokenizerFast

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=1, special_tokens=["<|endoftext|>"])
    # transformers 5 ignores vocab_file/merges_file here; wrap the trained `tokenizers` object instead.
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, num_labels=2,
                     pad_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def sample_frame():
    import pandas as pd

    return pd.read_csv(SAMPLE)


_TEMPLATE_DB: Path | None = None


def seed_mlflow_db(path: str | Path) -> Path:
    """Put an already-migrated, empty MLflow SQLite store at `path` (if none is there).

    Creating a store runs every MLflow schema migration (10-30 s on 2 busy cores); tests copy one
    migrated template instead. Production code is unaffected: it migrates its own store once.
    """
    import shutil
    import tempfile

    global _TEMPLATE_DB
    dst = Path(path)
    if dst.exists():
        return dst
    if _TEMPLATE_DB is None:
        from mlflow import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="fineship-mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()
        _TEMPLATE_DB = template
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE_DB, dst)
    return dst
