"""Tests of the ALBERT data pipeline: WikiText parsing, tokenizer fallback, SOP instances, collator and CLI."""
from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AlbertConfig, AlbertForPreTraining, AutoTokenizer

from albert.data import (
    MODEL_INPUT_COLUMNS,
    PretrainingDataMismatch,
    build_pretraining_dataset,
    check_sequence_length,
    create_sop_instances,
    load_or_train_tokenizer,
    load_pretraining_dataset,
    make_collator,
    read_wikitext_articles,
    split_sentences,
    train_unigram_tokenizer,
)
from albert.demo_corpus import generate_corpus, write_corpus
from collab.lab.swarm import REPO_ROOT

SCRIPT = REPO_ROOT / "albert" / "tokenize_wikitext103.py"
WIKITEXT_DIR = REPO_ROOT.parent / "shared" / "data" / "wikitext" / "wikitext-2-raw"
CLS, SEP = 2, 3

INLINE_WIKITEXT = """ 
 = First Article = 
 
 The first article begins here . It has two sentences . 
 
 = = History = = 
 
 A paragraph under a section . 
 = = = Details = = = 
 Another paragraph , with a formula line next : 
 = 1 henry and capacitance C = 
 1 farad . 
 
 = Second Article = 
 
 Only one paragraph here . 
"""


@pytest.fixture(scope="module")
def demo_articles() -> list[list[str]]:
    return read_wikitext_articles(generate_corpus(num_articles=60))


@pytest.fixture(scope="module")
def tokenizer(demo_articles):
    return train_unigram_tokenizer((p for article in demo_articles for p in article), vocab_size=600)


# ---------------------------------------------------------------- WikiText parsing


def test_read_articles_inline_splits_on_titles_and_keeps_paragraphs():
    articles = read_wikitext_articles(INLINE_WIKITEXT.splitlines(keepends=True))
    assert len(articles) == 2
    first, second = articles
    assert first[0] == "The first article begins here . It has two sentences ."
    assert "A paragraph under a section ." in first
    assert not any(p.startswith("=") and "History" in p for p in first)  # section headings dropped
    assert "= 1 henry and capacitance C =" in first  # a formula line is not a title: no blank lines around it
    assert second == ["Only one paragraph here ."]


@pytest.mark.parametrize("name, expected_first", [("wiki.valid.raw", "Homarus gammarus"),
                                                  ("wiki.test.raw", "Robert Boulter")])
def test_read_articles_real_wikitext(name, expected_first):
    path = WIKITEXT_DIR / name
    if not path.is_file():
        pytest.skip(f"real WikiText sample not found at {path}")
    with path.open(encoding="utf-8") as handle:
        articles = read_wikitext_articles(handle)
    assert len(articles) == 60  # both files hold 60 articles; the test file also has 2 title-like formula lines
    assert articles[0][0].startswith(expected_first)
    assert all(article and all(p and not p.startswith("= = ") for p in article) for article in articles)


def test_demo_corpus_is_deterministic_wikitext(tmp_path):
    lines = generate_corpus(num_articles=25, seed=3)
    assert lines == generate_corpus(num_articles=25, seed=3)
    assert lines != generate_corpus(num_articles=25, seed=4)
    assert sum(1 for line in lines if line.startswith(" = ") and not line.startswith(" = = ")) == 25
    assert any(" @-@ " in line or " @,@ " in line for line in lines)
    articles = read_wikitext_articles(write_corpus(tmp_path / "demo.raw", 25, 3).read_text().splitlines())
    assert len(articles) == 25


# ---------------------------------------------------------------- sentences


@pytest.mark.parametrize("paragraph, expected", [
    ("It is closely related to the American lobster , H. americanus . It may grow to 60 cm .",
     ["It is closely related to the American lobster , H. americanus .", "It may grow to 60 cm ."]),
    ("Dr. Smith met Mr. J. R. Jones in the U.S. capital. He left at 3 p.m. on Monday!  Was it late? Yes.",
     ["Dr. Smith met Mr. J. R. Jones in the U.S. capital.", "He left at 3 p.m. on Monday!", "Was it late?",
      "Yes."]),
    ('He said " Go . " Then No. 20 Squadron flew 2 @.@ 5 km . 1990 was a good year .',
     ['He said " Go . "', "Then No. 20 Squadron flew 2 @.@ 5 km .", "1990 was a good year ."]),
    ('He said : " One . Two . "', ['He said : " One .', 'Two . "']),  # a quote closing the paragraph stays
    ("no final period", ["no final period"]),
])
def test_split_sentences(paragraph, expected):
    assert split_sentences(paragraph) == expected


# ---------------------------------------------------------------- SOP instances


def _numbered_article(rng: random.Random, num_sentences: int) -> list[list[int]]:
    """Sentences whose token ids increase through the article, so order can be read back from ids."""
    next_id, sentences = 10, []
    for _ in range(num_sentences):
        length = rng.randint(3, 25)
        sentences.append(list(range(next_id, next_id + length)))
        next_id += length
    return sentences


def _segments(instance: dict) -> tuple[list[int], list[int]]:
    ids = instance["input_ids"]
    first_sep = ids.index(SEP)
    return ids[1:first_sep], ids[first_sep + 1:-1]


def _sop_instances(seed: int, max_seq_length: int = 64, short_seq_prob: float = 0.1) -> list[dict]:
    rng = random.Random(seed)
    instances = []
    for _ in range(150):
        instances += create_sop_instances(_numbered_article(rng, rng.randint(2, 30)), max_seq_length,
                                          short_seq_prob, rng, CLS, SEP)
    return instances


def test_sop_labels_are_balanced_and_swaps_are_real():
    instances = _sop_instances(seed=0)
    assert len(instances) > 500
    swapped = sum(instance["sentence_order_label"] for instance in instances)
    assert 0.42 < swapped / len(instances) < 0.58
    for instance in instances:
        tokens_a, tokens_b = _segments(instance)
        assert tokens_a and tokens_b
        if instance["sentence_order_label"] == 1:
            assert max(tokens_b) < min(tokens_a)  # B comes from before A in the article
        else:
            assert max(tokens_a) < min(tokens_b)


def test_sop_instance_layout():
    max_seq_length = 64
    instances = _sop_instances(seed=1, max_seq_length=max_seq_length, short_seq_prob=0.3)
    lengths = [len(instance["input_ids"]) for instance in instances]
    assert max(lengths) == max_seq_length and min(lengths) < max_seq_length // 2  # short targets happen
    for instance in instances:
        ids, types, special = instance["input_ids"], instance["token_type_ids"], instance["special_tokens_mask"]
        assert len(ids) == len(types) == len(special) <= max_seq_length
        assert ids[0] == CLS and ids[-1] == SEP and ids.count(SEP) == 2
        first_sep = ids.index(SEP)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        assert special == [int(token in (CLS, SEP)) for token in ids]


def test_sop_is_deterministic_under_seed():
    assert _sop_instances(seed=5) == _sop_instances(seed=5)
    assert _sop_instances(seed=5) != _sop_instances(seed=6)


def test_sop_splits_a_single_overlong_sentence():
    sentence = list(range(10, 310))
    instances = create_sop_instances([sentence], 64, 0.0, random.Random(0), CLS, SEP)
    assert len(instances) == 1
    tokens_a, tokens_b = _segments(instances[0])
    assert len(instances[0]["input_ids"]) == 64
    assert set(tokens_a + tokens_b) <= set(sentence)


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_falls_back_offline_and_round_trips(monkeypatch, caplog, tmp_path, demo_articles):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = [p for article in demo_articles for p in article]
    with caplog.at_level(logging.WARNING, logger="albert.data"):
        tokenizer, source = load_or_train_tokenizer("no-such-org/no-such-tokenizer", texts, vocab_size=500)
    assert "Unigram" in source
    assert any("training a Unigram tokenizer" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert len(tokenizer) <= 500
    special_ids = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
                   tokenizer.mask_token_id]
    assert special_ids == [0, 1, 2, 3, 4]  # the ids of the real albert-*-v2 vocabulary
    pair = tokenizer("The river flows north .", "It empties into the sea .", return_token_type_ids=True)
    assert pair["input_ids"][0] == tokenizer.cls_token_id and pair["input_ids"].count(tokenizer.sep_token_id) == 2
    assert pair["token_type_ids"][-1] == 1 and pair["token_type_ids"][0] == 0

    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    sample = texts[:20] + ["Ünïcode ``quotes'' and UPPER case , 1 @,@ 200 ."]
    assert reloaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert len(reloaded) == len(tokenizer)


def test_tokenizer_none_trains_without_warning(caplog, demo_articles):
    with caplog.at_level(logging.WARNING, logger="albert.data"):
        tokenizer, source = load_or_train_tokenizer("none", (p for a in demo_articles for p in a), 300)
    assert "Unigram" in source and len(tokenizer) <= 300
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- dataset, collator and model


def test_dataset_collator_and_albert_forward(demo_articles, tokenizer):
    dataset = build_pretraining_dataset(demo_articles, tokenizer, max_seq_length=96, seed=0)
    assert dataset.column_names == MODEL_INPUT_COLUMNS
    assert len(dataset) > len(demo_articles)
    assert dataset[:50] == build_pretraining_dataset(demo_articles, tokenizer, 96, seed=0)[:50]
    check_sequence_length(dataset, 96)
    with pytest.raises(PretrainingDataMismatch, match="--max_seq_length 64"):
        check_sequence_length(dataset, 64)

    examples = [dataset[i] for i in range(8)]
    batch = make_collator(tokenizer, mlm_probability=0.3)(examples)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "sentence_order_label"}
    assert batch["sentence_order_label"].dtype == torch.long
    assert batch["sentence_order_label"].tolist() == [ex["sentence_order_label"] for ex in examples]
    lengths = torch.tensor([len(ex["input_ids"]) for ex in examples])
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths.tolist()
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(ex["special_tokens_mask"]) for ex in examples],
                                             batch_first=True, padding_value=1)
    assert (batch["labels"][padded.bool()] == -100).all()  # never predict [CLS], [SEP] or padding
    assert (batch["labels"] != -100).any()

    config = AlbertConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=96,
                          pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    output = AlbertForPreTraining(config)(**batch)
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    assert output.sop_logits.shape == (8, 2)


# ---------------------------------------------------------------- command line


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # the script must not need it
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_cli_builds_loadable_dataset_and_refuses_to_overwrite(tmp_path):
    output = tmp_path / "out"
    args = ["--builtin_corpus", "--builtin_articles", "40", "--tokenizer_name", "none", "--vocab_size", "500",
            "--max_seq_length", "64", "--output_path", str(output)]
    result = _run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SOP instances from 40 articles" in result.stdout
    assert "Text source: built-in demo corpus" in result.stderr
    dataset, tokenizer = load_pretraining_dataset(output)
    assert len(dataset) > 40 and len(tokenizer) <= 500
    check_sequence_length(dataset, 64)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]  # staging folder renamed away

    refused = _run_cli(*args, cwd=tmp_path)
    assert refused.returncode != 0
    assert _error_lines(refused) == [f"error: --output_path {output} is not empty; pass --overwrite_output_dir "
                                     f"to replace it"]


def test_cli_missing_text_files_is_one_line_error(tmp_path):
    result = _run_cli("--text_files", str(tmp_path / "missing.raw"), "--output_path", str(tmp_path / "out"),
                      cwd=tmp_path)
    assert result.returncode != 0
    assert _error_lines(result) == [f"error: --text_files: no file matches '{tmp_path / 'missing.raw'}'"]
    assert not (tmp_path / "out").exists()


def test_load_pretraining_dataset_explains_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="python albert/tokenize_wikitext103.py --output_path") as error:
        load_pretraining_dataset(tmp_path / "nothing")
    assert "\n" not in str(error.value) and "--builtin_corpus" in str(error.value)
