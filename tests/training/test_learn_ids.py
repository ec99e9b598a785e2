"""`lmindexer learn-ids` end to end on 200 real Beauty items (rq-VAE and HC quick presets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from lmindexer.cli import main
from training.data.amazon import BEAUTY_ITEMS, AmazonDataset, items_as_documents, read_items
from training.data.corpus import write_corpus_jsonl


def beauty_corpus(path: Path, n: int = 200) -> Path:
    """The first n vendored Beauty items as a corpus JSONL (doc_id = ASIN, category = first path)."""
    items = dict(list(read_items(BEAUTY_ITEMS).items())[:n])
    write_corpus_jsonl(path, items_as_documents(AmazonDataset(items, [], BEAUTY_ITEMS, BEAUTY_ITEMS)))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    # One embedding cache for the whole session, so each module embeds the 200 items once.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMINDEXER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "lmindexer-cache"))
        yield beauty_corpus(tmp_path_factory.mktemp("corpus") / "beauty200.jsonl")


def learn(corpus: Path, method: str, out: Path, *extra: str) -> int:
    return main(["learn-ids", "--corpus", str(corpus), "--method", method, "--preset", "quick",
                 "--out", str(out), "--set", "progress=false" if method == "rqvae" else "seed=42", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hc", "rqvae"])
def test_learn_ids_end_to_end_and_deterministic(corpus, tmp_path, method):
    out = tmp_path / "ids"
    assert learn(corpus, method, out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids"]  # no staging directory left behind
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    lines = [json.loads(line) for line in (out / "ids.jsonl").read_text().splitlines()]
    corpus_ids = [json.loads(line)["doc_id"] for line in corpus.read_text().splitlines()]
    assert [r["doc_id"] for r in lines] == corpus_ids  # the ID table keeps corpus order
    ids = np.array([r["semantic_id"] for r in lines])
    assert ids.shape == (200, run["num_levels"] + 1)
    assert len({tuple(r) for r in ids.tolist()}) == 200  # unique after the counter
    for level, size in enumerate(run["codebook_sizes"]):
        assert ids[:, level].min() >= 0 and ids[:, level].max() < size
    assert ids[:, -1].max() + 1 == run["counter_size"]
    assert run["corpus"] == str(corpus.resolve()) and run["labels"] == "category"
    assert run["method"] == method and run["config"]["seed"] == 42
    # AMI of the first level against the Beauty categories: real structure, not chance.
    assert metrics["levels"][0]["ami"] > 0.2
    assert metrics["collisions"]["largest_collision_group"] == run["counter_size"]
    tensors = load_file(str(out / run["files"]["checkpoint"]))
    assert tensors and all(t.size for t in tensors.values())
    assert json.loads((out / run["files"]["config"]).read_text())["method"] == method
    if method == "rqvae":
        assert run["num_levels"] == 3 and tensors["codebooks"].shape == (3, 64, 32)
    # Same seed, same data: the same IDs, byte for byte.
    again = tmp_path / "again"
    assert learn(corpus, method, again) == 0
    assert (again / "ids.jsonl").read_bytes() == (out / "ids.jsonl").read_bytes()


def test_bad_corpus_exits_2_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": "a", "text": "one"}\n{"doc_id": "b", "text": "two"}\n{"doc_id": "c", "text": \n')
    out = tmp_path / "out"
    assert learn(bad, "hc", out) == 2
    assert f"{bad}:3" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_failure_during_learning_leaves_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    # 200 documents cannot be embedded by a model folder that does not exist: fails mid-run.
    assert learn(corpus, "hc", out, "--set", f"encoder={tmp_path / 'no-model'}") == 2
    assert "encoder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_unknown_setting(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert learn(corpus, "hc", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert learn(corpus, "hc", tmp_path / "other", "--set", "childen=3") == 2
    assert "childen" in capsys.readouterr().err
    assert learn(corpus, "hc", out, "--overwrite") == 0
    assert (out / "ids.jsonl").is_file() and not (out / "keep.txt").exists()
