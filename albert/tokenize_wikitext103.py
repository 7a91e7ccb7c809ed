"""Build the ALBERT SOP pretraining set from WikiText and save it with its tokenizer.

Text source, first match wins: --builtin_corpus (generated demo articles, offline),
--text_files (local raw WikiText files or glob patterns), otherwise the hub dataset
wikitext/wikitext-103-raw-v1 (train split). The tokenizer is --tokenizer_name
(albert-large-v2 by default) or, when it cannot be loaded, a Unigram tokenizer
trained on the corpus. Output: `datasets.save_to_disk` at --output_path and the
tokenizer in <output_path>/tokenizer, written to a temporary folder and renamed.

Example (offline demo):
    python albert/tokenize_wikitext103.py --builtin_corpus --max_seq_length 128 --vocab_size 4000
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make `import albert.data` work without installing the repo.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import glob
import logging
import os
import shutil
import uuid

import datasets
from transformers import PreTrainedTokenizerBase

from albert.data import (TOKENIZER_SUBDIR, build_pretraining_dataset,
                         load_or_train_tokenizer, read_wikitext_articles)
from albert.demo_corpus import generate_corpus
from collab.cli import run_main, setup_logging
from collab.hub import hub_offline_mode, hub_reachable

logger = logging.getLogger(__name__)
HUB_DATASET = ("wikitext", "wikitext-103-raw-v1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_argument_group("text source (first given wins; default: hub wikitext-103-raw-v1)")
    source.add_argument("--builtin_corpus", action="store_true",
                        help="use the generated offline demo corpus (albert/demo_corpus.py)")
    source.add_argument("--builtin_articles", type=int, default=400,
                        help="number of demo articles for --builtin_corpus")
    source.add_argument("--text_files", nargs="+", metavar="FILE",
                        help="local raw WikiText files or glob patterns, e.g. wikitext-2-raw/wiki.valid.raw")
    parser.add_argument("--output_path", default="data/albert_tokenized_wikitext",
                        help="where to save the dataset; the tokenizer goes to <output_path>/tokenizer")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="replace a non-empty --output_path")
    parser.add_argument("--tokenizer_name", default="albert-large-v2",
                        help="pretrained tokenizer (hub name or folder); 'none' always trains one on the corpus")
    parser.add_argument("--vocab_size", type=int, default=30000,
                        help="vocabulary size when a Unigram tokenizer is trained")
    parser.add_argument("--max_seq_length", type=int, default=512,
                        help="length of each instance in tokens, [CLS] and [SEP]s included")
    parser.add_argument("--short_seq_prob", type=float, default=0.1,
                        help="probability of a shorter random target length for an instance")
    parser.add_argument("--seed", type=int, default=0, help="seed for segment cuts, swaps and truncation")
    parser.add_argument("--num_proc", type=int, default=1, help="worker processes for Dataset.map")
    return parser.parse_args(argv)


def check_output_path(output_path: Path, overwrite: bool) -> None:
    if output_path.exists() and not output_path.is_dir():
        raise SystemExit(f"error: --output_path {output_path} exists and is not a directory")
    if output_path.is_dir() and any(output_path.iterdir()) and not overwrite:
        raise SystemExit(f"error: --output_path {output_path} is not empty; pass --overwrite_output_dir "
                         f"to replace it")


def expand_text_files(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).is_file() else [])
        if not matches:
            raise SystemExit(f"error: --text_files: no file matches '{pattern}'")
        files += [Path(match) for match in matches]
    return files


def read_text_files(files: list[Path]) -> list[str]:
    lines: list[str] = []
    for path in files:
        with path.open(encoding="utf-8") as handle:
            lines += handle.readlines()
    return lines


def load_hub_wikitext() -> list[str]:
    """The train split of wikitext-103-raw-v1 from the Hugging Face hub (or the local datasets cache)."""
    hint = "pass --text_files FILE... for local WikiText files or --builtin_corpus for the offline demo"
    if not hub_offline_mode() and not hub_reachable():  # offline mode may still find the datasets cache
        raise SystemExit(f"error: cannot reach the Hugging Face hub to download {'/'.join(HUB_DATASET)}; {hint}")
    try:
        return datasets.load_dataset(*HUB_DATASET, split="train")["text"]
    except Exception as error:  # any loader failure gets the same one-line advice
        raise SystemExit(f"error: could not load {'/'.join(HUB_DATASET)} ({type(error).__name__}); {hint}") from error


def load_lines(args: argparse.Namespace) -> tuple[list[str], str]:
    """Return raw WikiText lines and a description of their source."""
    if args.builtin_corpus:
        return generate_corpus(args.builtin_articles), f"built-in demo corpus ({args.builtin_articles} articles)"
    if args.text_files:
        files = expand_text_files(args.text_files)
        return read_text_files(files), f"local files {', '.join(str(f) for f in files)}"
    return load_hub_wikitext(), f"hub dataset {'/'.join(HUB_DATASET)} (train)"


def save_atomically(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, output_path: Path) -> None:
    """Write into a temporary sibling folder, then rename, so a crash never leaves a half-written dataset."""
    output_path.parent.mkdir(parents=True, exist_ok=True)
    staging = output_path.parent / f".{output_path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # not tempfile.mkdtemp: its 0700 mode would make the dataset private to this user
    try:
        dataset.save_to_disk(str(staging))
        tokenizer.save_pretrained(str(staging / TOKENIZER_SUBDIR))
        if output_path.exists():
            retired = staging.with_name(staging.name + "-old")
            output_path.rename(retired)
            try:
                staging.rename(output_path)
            except OSError:
                retired.rename(output_path)
                raise
            shutil.rmtree(retired)
        else:
            staging.rename(output_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    output_path = Path(args.output_path)
    check_output_path(output_path, args.overwrite_output_dir)
    lines, source = load_lines(args)
    logger.info("Text source: %s", source)
    articles = read_wikitext_articles(lines)
    if not articles:
        raise SystemExit(f"error: no WikiText articles found in {source}")
    logger.info("Read %d articles", len(articles))
    paragraphs = (paragraph for article in articles for paragraph in article)
    tokenizer, tokenizer_source = load_or_train_tokenizer(args.tokenizer_name, paragraphs, args.vocab_size)
    logger.info("Tokenizer: %s", tokenizer_source)
    dataset = build_pretraining_dataset(articles, tokenizer, args.max_seq_length, args.short_seq_prob,
                                        args.seed, args.num_proc)
    save_atomically(dataset, tokenizer, output_path)
    print(f"Saved {len(dataset)} SOP instances from {len(articles)} articles to {output_path} "
          f"(tokenizer: {tokenizer_source}, vocab size {len(tokenizer)}, max_seq_length {args.max_seq_length})")


if __name__ == "__main__":
    run_main(main)
