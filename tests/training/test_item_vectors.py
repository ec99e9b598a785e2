"""The item vectors learn-ids keeps for LMIndexer IDs (training.indexing.item_vectors): written by the
final-network pass of a tiny `learn-ids --method lmindexer`, equal to what the recommender computes
(training.recommendation.items.text_vectors), used by it when they match, recomputed when they do not."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_lmindexer import TINY, _documents
from training.config import config_to_dict
from training.data.corpus import write_corpus_jsonl
from training.downstream.tasks import load_id_source
from training.indexing.id_table import read_ids_jsonl
from training.indexing.item_vectors import RECORD_KEY, VECTORS_FILE, network_digest, stored_item_vectors, texts_digest
from training.indexing.learning import learn_ids
from training.indexing.lmindexer.schedule import final_network_pass
from training.recommendation.items import text_vectors

TEXTS = [d.text for d in _documents()]


@pytest.fixture(scope="module")
def ids_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`learn-ids --method lmindexer` with the tiny schedule of test_lmindexer on its 24 documents."""
    root = tmp_path_factory.mktemp("item-vectors")
    write_corpus_jsonl(root / "corpus.jsonl", _documents())
    preset = root / "tiny.toml"
    preset.write_text("".join(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}\n"
                              for key, value in config_to_dict(TINY).items()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMINDEXER_CACHE_DIR", str(root / "cache"))
        learn_ids(root / "corpus.jsonl", "lmindexer", root / "ids", preset=str(preset))
    return root / "ids"


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One cache for the recomputed vectors of this module (the network's encoder folder is written once)."""
    monkeypatch.setenv("LMINDEXER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "item-vectors-cache"))


def test_learn_ids_writes_every_documents_normalised_vector_and_its_record(ids_dir: Path) -> None:
    vectors = np.load(ids_dir / VECTORS_FILE)
    assert vectors.shape == (24, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert json.loads((ids_dir / "run.json").read_text())["files"]["item_vectors"] == VECTORS_FILE
    record = json.loads((ids_dir / "lmindexer.json").read_text())[RECORD_KEY]
    assert record["file"] == VECTORS_FILE and record["shape"] == [24, 384] and record["dtype"] == "float32"
    assert record["order"] == "ids.jsonl" and record["encoder"] == "network"
    assert record["max_length"] == TINY.max_length and record["base_encoder"] == TINY.encoder
    assert record["pooling"] == "mean" and record["normalized"] is True and record["normalization"] == "l2"
    assert record["texts_sha256"] == texts_digest(TEXTS) != texts_digest(TEXTS[::-1])
    assert record["network_sha256"] == network_digest(ids_dir / "network")
    assert list(read_ids_jsonl(ids_dir / "ids.jsonl").doc_ids) == [d.doc_id for d in _documents()]
    metrics = json.loads((ids_dir / "metrics.json").read_text())["method"]
    assert metrics["final_network_agreement_documents"] == 24 and metrics["final_network_pass_seconds"] >= 0


def test_the_recommender_reads_the_stored_vectors_which_equal_the_ones_it_would_compute(
        ids_dir: Path, tmp_path: Path, cache: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="training.recommendation.items")
    stored, record = text_vectors(TEXTS, load_id_source(ids_dir))
    assert record["vectors_from"] == str(ids_dir / VECTORS_FILE)
    assert record["kind"] == "lmindexer network encoder" and record["max_length"] == TINY.max_length
    assert any("stored by learn-ids" in m for m in caplog.messages)
    assert np.array_equal(stored, np.load(ids_dir / VECTORS_FILE))
    # an ID directory from before the vectors were kept: the same vectors, computed
    older = tmp_path / "older"
    shutil.copytree(ids_dir, older)
    (older / VECTORS_FILE).unlink()
    caplog.clear()
    computed, record = text_vectors(TEXTS, load_id_source(older))
    assert record["vectors_from"] == "computed" and Path(record["encoder"], "config.json").is_file()
    assert any("computing them" in m and "missing" in m for m in caplog.messages)
    assert computed.shape == stored.shape and float(np.abs(computed - stored).max()) <= 1e-5


def test_other_texts_or_settings_are_computed_not_read(ids_dir: Path, cache: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="training.recommendation.items")
    stored = np.load(ids_dir / VECTORS_FILE)
    reordered, record = text_vectors(TEXTS[::-1], load_id_source(ids_dir))
    assert record["vectors_from"] == "computed"
    assert any("other texts" in m for m in caplog.messages)
    assert float(np.abs(reordered - stored[::-1]).max()) <= 1e-5
    changed = [*TEXTS[:-1], TEXTS[-1] + " (new)"]
    assert text_vectors(changed, load_id_source(ids_dir))[1]["vectors_from"] == "computed"
    vectors, why = stored_item_vectors(ids_dir, TEXTS, ids_dir / "network", TINY.max_length + 1)
    assert vectors is None and "tokens per document" in why


def test_a_shorter_agreement_check_still_encodes_every_document(ids_dir: Path) -> None:
    codes = read_ids_jsonl(ids_dir / "ids.jsonl").semantic_ids[:, :-1]  # the counter column is not learned
    agreement, vectors = final_network_pass(ids_dir / "network", TEXTS, codes, TINY, torch.device("cpu"),
                                            agreement_documents=10)
    assert agreement["documents"] == 10 and agreement["final_network_agreement"] == 1.0
    assert vectors.shape == (24, 384)
    assert float(np.abs(vectors - np.load(ids_dir / VECTORS_FILE)).max()) <= 1e-5


def test_the_pass_over_a_frozen_encoders_cached_states_equals_the_encoder_pass(ids_dir: Path) -> None:
    """With the whole encoder frozen, the indexer's cached states (one (S_i, d) tensor per document, each
    computed in its own batch) are the saved encoder's output: the pass that reads them gives the agreement
    and the vectors of the pass that runs the encoder (learn-ids reads them to save an encoder pass)."""
    from training.indexing.lmindexer.encoder_states import tokenize_corpus
    from training.indexing.network import SemanticIdNetwork

    codes = read_ids_jsonl(ids_dir / "ids.jsonl").semantic_ids[:, :-1]
    network = SemanticIdNetwork.load(ids_dir / "network").eval()
    corpus = tokenize_corpus(TEXTS, TINY)
    with torch.no_grad():
        states = [network.encode(row[None], torch.ones_like(row)[None])[0] for row in corpus.input_ids]
    encoded, encoded_vectors = final_network_pass(ids_dir / "network", TEXTS, codes, TINY, torch.device("cpu"))
    cached, cached_vectors = final_network_pass(ids_dir / "network", TEXTS, codes, TINY, torch.device("cpu"),
                                                frozen_states=states)
    assert cached == encoded and cached["final_network_agreement"] == 1.0
    assert float(np.abs(cached_vectors - encoded_vectors).max()) <= 1e-5


def test_export_turns_a_network_folder_into_its_encoders_folder(ids_dir: Path, cache: None) -> None:
    """The stored vectors name the network folder as their encoder; exporting it as the recommender's text
    encoder (when the indexer's encoder would not do) needs a Hugging Face folder."""
    from training.downstream.export import _encoder_folder

    folder = Path(_encoder_folder(str(ids_dir / "network")))
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert _encoder_folder("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
