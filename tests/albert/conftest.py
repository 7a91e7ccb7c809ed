import subprocess
import sys
from pathlib import Path

import pytest

from collab.swarm import REPO_ROOT


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
