"""Shared fixtures: paths to the real sample data in ../shared (present in CI), the repo root, and a small ALBERT
dataset built once per session (the swarm and chaos tests of every folder use it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA} (it is in CI and on developer machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def albert_dataset(tmp_path_factory) -> Path:
    """A small SOP dataset from the built-in corpus, built once per session with the real CLI."""
    path = tmp_path_factory.mktemp("albert_data") / "dataset"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "albert/tokenize_wikitext103.py"), "--builtin_corpus", "--builtin_articles",
         "200", "--tokenizer_name", "none", "--vocab_size", "2000", "--max_seq_length", "128", "--output_path",
         str(path)], check=True, capture_output=True, timeout=300,
    )
    return path
