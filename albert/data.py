"""ALBERT pretraining data: WikiText parsing, tokenizer, SOP instances and the batch collator.

Shared by `albert/tokenize_wikitext103.py` (which builds and saves the dataset once)
and the trainer (which loads it and batches it with `make_collator`). Instances
follow the ALBERT recipe: consecutive sentences of one article are packed into a
chunk, the chunk is cut into segments A and B, and half of the pairs are swapped;
the model predicts whether they were swapped (sentence-order prediction, SOP).
Masking for MLM happens in the collator, so every epoch sees fresh masks.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets
import pyarrow.compute
import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import Unigram
from transformers import AlbertTokenizer, AutoTokenizer, DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from collab.errors import UserError
from collab.hub import hub_reachable

logger = logging.getLogger(__name__)

# ALBERT's special tokens in the order of the real albert-*-v2 vocabulary, so ids match (pad 0, unk 1, ...).
SPECIAL_TOKENS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_SUBDIR = "tokenizer"
TOKENIZE_COMMAND = "python albert/tokenize_wikitext103.py --output_path {path}"
MODEL_INPUT_COLUMNS = ["input_ids", "token_type_ids", "special_tokens_mask", "sentence_order_label"]

_TITLE_RE = re.compile(r"^= [^=].* =$")
# Words whose trailing period does not end a sentence (compared lowercased, without the period).
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "mt", "ft", "jr", "sr", "sen", "gen", "col", "lt", "sgt", "capt",
    "cmdr", "adm", "gov", "rev", "hon", "no", "nos", "vol", "vols", "pp", "p", "op", "ch", "fig", "figs",
    "co", "corp", "inc", "ltd", "bros", "dept", "univ", "est", "approx", "ca", "c", "cf", "vs", "etc",
    "e.g", "i.e", "al", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
}
_SENTENCE_END_RE = re.compile(r"(?<!@)[.!?]+[\"')\]]*\s+")
_DETACHED_QUOTE_RE = re.compile(r"\"\s*")
_INITIALS_RE = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")


# ---------------------------------------------------------------- WikiText parsing


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_article_title(lines: Sequence[str], index: int) -> bool:
    """True for ` = Title = ` lines; WikiText puts blank lines around titles, which excludes formula lines."""
    if not _TITLE_RE.match(lines[index].strip()):
        return False
    before_blank = index == 0 or _is_blank(lines[index - 1])
    after_blank = index == len(lines) - 1 or _is_blank(lines[index + 1])
    return before_blank and after_blank


def _is_section_heading(line: str) -> bool:
    """` = = Section = = ` and deeper; a lone title-like line inside an article is content (a formula)."""
    stripped = line.strip()
    return stripped.startswith("= = ") and stripped.endswith(" = =")


def read_wikitext_articles(lines: Iterable[str]) -> list[list[str]]:
    """Split raw WikiText lines into articles, each a list of paragraphs (headings and blanks dropped)."""
    lines = [line.rstrip("\r\n") for line in lines]
    articles: list[list[str]] = []
    current: list[str] = []
    for index, line in enumerate(lines):
        if _is_article_title(lines, index):
            if current:
                articles.append(current)
            current = []
        elif not _is_blank(line) and not _is_section_heading(line):
            current.append(line.strip())
    if current:
        articles.append(current)
    return articles


def _ends_sentence(text: str, punctuation_start: int, next_start: int) -> bool:
    """Decide whether the punctuation at `punctuation_start` closes a sentence."""
    if next_start >= len(text):
        return True
    following = text[next_start]
    if not (following.isupper() or following.isdigit() or following in "\"'(["):
        return False
    if text[punctuation_start] != "." or punctuation_start == 0 or text[punctuation_start - 1].isspace():
        return True  # '!' / '?', or WikiText's detached " . "
    word = text[:punctuation_start].split()[-1]
    return word.lower() not in _ABBREVIATIONS and not _INITIALS_RE.fullmatch(word)


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences with a regex, keeping abbreviations and initials intact."""
    sentences, start = [], 0
    for match in _SENTENCE_END_RE.finditer(paragraph):
        if not _ends_sentence(paragraph, match.start(), match.end()):
            continue
        end = match.end()
        # WikiText detaches closing quotes (' Go . " Then'): an odd quote count means this one closes the sentence.
        quote = _DETACHED_QUOTE_RE.match(paragraph, end)
        if quote and paragraph[start:end].count('"') % 2 == 1:
            end = quote.end()
        sentences.append(paragraph[start:end].strip())
        start = end
    sentences.append(paragraph[start:].strip())
    return _attach_bare_punctuation([sentence for sentence in sentences if sentence])


def _attach_bare_punctuation(sentences: list[str]) -> list[str]:
    """Glue pieces without letters or digits (a paragraph's closing ' " ') to the sentence before them."""
    merged: list[str] = []
    for sentence in sentences:
        if merged and not any(char.isalnum() for char in sentence):
            merged[-1] = f"{merged[-1]} {sentence}"
        else:
            merged.append(sentence)
    return merged


# ---------------------------------------------------------------- tokenizer


def _albert_style_tokenizer() -> Tokenizer:
    """An empty Unigram pipeline identical to the one `AlbertTokenizer` rebuilds on load, so encodings round-trip."""
    tokenizer = Tokenizer(Unigram())
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Replace("``", '"'), normalizers.Replace("''", '"'),
        normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase(),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


def _unigram_vocab(backend: Tokenizer) -> list[tuple[str, float]]:
    """The trained (piece, log-probability) list; the Python binding only exposes it through JSON."""
    model = json.loads(backend.to_str())["model"]
    pieces = [(piece, float(score)) for piece, score in model["vocab"]]
    if [piece for piece, _ in pieces[:len(SPECIAL_TOKENS)]] != SPECIAL_TOKENS:
        raise RuntimeError(f"Unigram trainer did not put the special tokens first: {pieces[:len(SPECIAL_TOKENS)]}")
    return pieces


def train_unigram_tokenizer(texts: Iterable[str], vocab_size: int) -> AlbertTokenizer:
    """Train a SentencePiece-style Unigram tokenizer with ALBERT's special tokens, wrapped for transformers."""
    backend = _albert_style_tokenizer()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      unk_token="<unk>", show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    pieces = _unigram_vocab(backend)
    if len(pieces) < vocab_size:
        logger.info("Corpus too small for %d pieces: using the %d pieces the Unigram trainer found",
                    vocab_size, len(pieces))
    # AlbertTokenizer adds the [CLS] $A [SEP] $B:1 [SEP]:1 post-processor and saves/loads as an ALBERT tokenizer.
    return AlbertTokenizer(vocab=pieces)


def load_or_train_tokenizer(name: str | None, texts: Iterable[str],
                            vocab_size: int) -> tuple[PreTrainedTokenizerBase, str]:
    """Return (tokenizer, description of its source): `name` if loadable, else one trained on `texts`."""
    if name and name.lower() != "none":
        # Without hub access only the local cache is tried: the hub client would retry for about a minute.
        online = Path(name).is_dir() or hub_reachable()
        try:
            return AutoTokenizer.from_pretrained(name, local_files_only=not online), f"pretrained '{name}'"
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0] if online else "Hugging Face hub unreachable and not in the local cache"
            logger.warning("Could not load tokenizer '%s' (%s); training a Unigram tokenizer (vocab_size=%d) on "
                           "the corpus instead", name, reason, vocab_size)
    tokenizer = train_unigram_tokenizer(texts, vocab_size)
    return tokenizer, f"Unigram trained on the corpus ({len(tokenizer)} pieces)"


# ---------------------------------------------------------------- SOP instances


def _truncate_pair(tokens_a: list[int], tokens_b: list[int], max_tokens: int, rng: random.Random) -> None:
    """BERT's truncate_seq_pair: trim the longer side one token at a time, from the front or the back."""
    while len(tokens_a) + len(tokens_b) > max_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _split_chunk(chunk: list[list[int]], rng: random.Random) -> tuple[list[int], list[int]] | None:
    """Cut a chunk at a random sentence boundary; a lone sentence is cut inside (None if too short)."""
    if len(chunk) >= 2:
        a_end = rng.randint(1, len(chunk) - 1)
        return [t for s in chunk[:a_end] for t in s], [t for s in chunk[a_end:] for t in s]
    sentence = chunk[0]
    if len(sentence) < 2:
        return None
    cut = rng.randint(1, len(sentence) - 1)
    return sentence[:cut], sentence[cut:]


def _pair_to_instance(tokens_a: list[int], tokens_b: list[int], swapped: bool,
                      cls_id: int, sep_id: int) -> dict[str, Any]:
    first = [cls_id] + tokens_a + [sep_id]
    second = tokens_b + [sep_id]
    return {
        "input_ids": first + second,
        "token_type_ids": [0] * len(first) + [1] * len(second),
        "special_tokens_mask": [1] + [0] * len(tokens_a) + [1] + [0] * len(tokens_b) + [1],
        "sentence_order_label": int(swapped),
    }


def _make_instance(chunk: list[list[int]], max_tokens: int, rng: random.Random,
                   cls_id: int, sep_id: int) -> dict[str, Any] | None:
    pair = _split_chunk(chunk, rng)
    if pair is None:
        return None
    tokens_a, tokens_b = pair
    swapped = rng.random() < 0.5
    if swapped:
        tokens_a, tokens_b = tokens_b, tokens_a
    _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
    return _pair_to_instance(tokens_a, tokens_b, swapped, cls_id, sep_id)


def create_sop_instances(article_token_ids: list[list[int]], max_seq_length: int, short_seq_prob: float,
                         rng: random.Random, cls_id: int, sep_id: int) -> list[dict[str, Any]]:
    """ALBERT's create_instances_from_document with SOP: label 1 means segments A and B were swapped."""
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length must be at least 5, got {max_seq_length}")
    max_tokens = max_seq_length - 3  # room for [CLS] and two [SEP]
    sentences = [ids for ids in article_token_ids if ids]
    instances: list[dict[str, Any]] = []
    chunk: list[list[int]] = []
    chunk_length = 0
    # Shorter targets now and then teach the model short inputs, as in BERT/ALBERT.
    target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    for index, sentence in enumerate(sentences):
        chunk.append(sentence)
        chunk_length += len(sentence)
        if index == len(sentences) - 1 or chunk_length >= target:
            instance = _make_instance(chunk, max_tokens, rng, cls_id, sep_id)
            if instance is not None:
                instances.append(instance)
            chunk, chunk_length = [], 0
            target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
    return instances


# ---------------------------------------------------------------- datasets


_FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "token_type_ids": datasets.Sequence(datasets.Value("int8")),
    "special_tokens_mask": datasets.Sequence(datasets.Value("int8")),
    "sentence_order_label": datasets.Value("int8"),
})


def _sop_batch(batch: dict[str, list], indices: list[int], tokenizer: PreTrainedTokenizerBase,
               max_seq_length: int, short_seq_prob: float, seed: int) -> dict[str, list]:
    """Dataset.map function: articles (lists of paragraphs) -> SOP instances."""
    per_article = [[s for paragraph in paragraphs for s in split_sentences(paragraph)]
                   for paragraphs in batch["paragraphs"]]
    flat = [sentence for sentences in per_article for sentence in sentences]
    flat_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    output: dict[str, list] = {column: [] for column in MODEL_INPUT_COLUMNS}
    offset = 0
    for article_index, sentences in zip(indices, per_article):
        token_ids = flat_ids[offset:offset + len(sentences)]
        offset += len(sentences)
        # Seeding per article keeps the result independent of batch size and num_proc.
        rng = random.Random(f"{seed}:{article_index}")
        for instance in create_sop_instances(token_ids, max_seq_length, short_seq_prob, rng,
                                             tokenizer.cls_token_id, tokenizer.sep_token_id):
            for column in MODEL_INPUT_COLUMNS:
                output[column].append(instance[column])
    return output


def build_pretraining_dataset(articles: list[list[str]], tokenizer: PreTrainedTokenizerBase,
                              max_seq_length: int, short_seq_prob: float = 0.1, seed: int = 0,
                              num_proc: int = 1) -> datasets.Dataset:
    """Turn articles (lists of paragraphs) into a Dataset of SOP instances."""
    source = datasets.Dataset.from_dict({"paragraphs": articles})
    make_batch = functools.partial(_sop_batch, tokenizer=tokenizer, max_seq_length=max_seq_length,
                                   short_seq_prob=short_seq_prob, seed=seed)
    return source.map(make_batch, batched=True, with_indices=True, remove_columns=["paragraphs"],
                      features=_FEATURES, num_proc=num_proc if num_proc > 1 else None,
                      desc="Creating SOP instances")


class PretrainingDataNotFound(UserError, FileNotFoundError):
    """No tokenized dataset at the given path. A UserError, so entry points print the one-line fix."""


class PretrainingDataMismatch(UserError, ValueError):
    """The tokenized dataset does not fit the model. A UserError, so entry points print the one-line fix."""


def _rebuild_hint(path: Path) -> str:
    return TOKENIZE_COMMAND.format(path=path) + " (add --builtin_corpus when offline)"


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved next to a tokenized dataset (in <path>/tokenizer)."""
    path = Path(path)
    tokenizer_dir = path / TOKENIZER_SUBDIR
    if not tokenizer_dir.is_dir():
        raise PretrainingDataNotFound(f"no tokenized dataset at {path} (missing {tokenizer_dir}); "
                                      f"create it with: {_rebuild_hint(path)}")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def load_pretraining_dataset(path: str | Path) -> tuple[datasets.Dataset, PreTrainedTokenizerBase]:
    """Load the dataset and tokenizer written by albert/tokenize_wikitext103.py."""
    path = Path(path)
    tokenizer = load_tokenizer(path)
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise PretrainingDataNotFound(f"no tokenized dataset at {path}; create it with: "
                                      f"{_rebuild_hint(path)}") from error
    missing = set(MODEL_INPUT_COLUMNS) - set(getattr(dataset, "column_names", []))
    if not isinstance(dataset, datasets.Dataset) or missing:
        raise PretrainingDataMismatch(f"{path} is not an ALBERT SOP dataset (missing columns {sorted(missing)}); "
                                      f"recreate it with: {_rebuild_hint(path)} --overwrite_output_dir")
    return dataset, tokenizer


def max_sequence_length(dataset: datasets.Dataset) -> int:
    """Longest input_ids in the underlying table, computed by Arrow without reading rows into Python."""
    lengths = pyarrow.compute.list_value_length(dataset.data.column("input_ids"))
    return int(pyarrow.compute.max(lengths).as_py() or 0)


def check_sequence_length(dataset: datasets.Dataset, max_position_embeddings: int) -> None:
    """Fail early, with the fix, when instances are longer than the model's position embeddings."""
    longest = max_sequence_length(dataset)
    if longest > max_position_embeddings:
        raise PretrainingDataMismatch(
            f"the dataset has sequences of {longest} tokens but the model accepts {max_position_embeddings}; "
            f"rebuild it with --max_seq_length {max_position_embeddings}")


# ---------------------------------------------------------------- batching


@dataclass
class SOPCollator:
    """Pads a batch, applies MLM masking and keeps the SOP label: exactly AlbertForPreTraining's inputs."""

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.15
    pad_to_multiple_of: int | None = None
    _mlm: DataCollatorForLanguageModeling = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._mlm = DataCollatorForLanguageModeling(self.tokenizer, mlm=True, mlm_probability=self.mlm_probability,
                                                    pad_to_multiple_of=self.pad_to_multiple_of)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = [{"input_ids": ex["input_ids"], "token_type_ids": ex["token_type_ids"],
                     "special_tokens_mask": ex["special_tokens_mask"]} for ex in examples]
        # The MLM collator pads (attention_mask included) and never masks where special_tokens_mask is 1.
        batch = self._mlm(features)
        if "attention_mask" not in batch:  # tokenizers whose model_input_names omit it
            batch["attention_mask"] = self._attention_mask(features, batch["input_ids"].shape[1])
        batch["sentence_order_label"] = torch.tensor([int(ex["sentence_order_label"]) for ex in examples],
                                                     dtype=torch.long)
        return {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids", "labels",
                                            "sentence_order_label")}

    def _attention_mask(self, features: list[dict[str, Any]], padded_length: int) -> torch.Tensor:
        mask = torch.zeros(len(features), padded_length, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            if self.tokenizer.padding_side == "left":
                mask[row, padded_length - length:] = 1
            else:
                mask[row, :length] = 1
        return mask


def make_collator(tokenizer: PreTrainedTokenizerBase, mlm_probability: float = 0.15,
                  pad_to_multiple_of: int | None = None) -> SOPCollator:
    """Collator for the trainer's DataLoader; see SOPCollator."""
    return SOPCollator(tokenizer, mlm_probability, pad_to_multiple_of)
