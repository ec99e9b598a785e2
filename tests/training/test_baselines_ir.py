"""Retrieval baselines: exact top-k with trec_eval's ties, BM25 on Cranfield against the reference
figure, the dense index on a few documents, and the `baseline` / `evaluate-run` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmindexer.cli import main
from training.baselines.bm25 import BM25Index, BM25Settings
from training.baselines.retrieval import run_retrieval_baseline, top_k_run
from training.data.corpus import Document
from training.data.trec import Query, read_qrels, read_run
from training.metrics import evaluate

# Reference figures on all 225 queries, title + text (shared/data/README.md): bm25s with English
# stop words, scored with ranx.
BM25_REFERENCE = {"ndcg@10": 0.352, "recall@10": 0.389, "mrr@10": 0.508}


def test_top_k_breaks_ties_by_doc_id_descending() -> None:
    scores = np.array([[1.0, 3.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    run = top_k_run(scores, ["q"], ["d1", "d2", "d10", "zz", "a"], k=3)
    assert list(run["q"]) == ["d2", "zz", "d10"]  # 3.0, then the 1.0 ties: "zz" > "d10" > "d1"
    assert top_k_run(scores, ["q"], ["d1", "d2", "d10", "zz", "a"], k=50)["q"].keys() == {
        "d1", "d2", "d10", "zz", "a"}
    with pytest.raises(ValueError, match="shape"):
        top_k_run(scores, ["q", "r"], ["d1"], k=1)


@settings(max_examples=50, deadline=None)
@given(
    matrix=st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=8, max_size=8), min_size=1, max_size=3),
    k=st.integers(1, 8),
)
def test_top_k_scores_like_the_full_ranking(matrix: list[list[float]], k: int) -> None:
    # Cutting the run at k must not change any metric at k: the right tied documents are kept.
    doc_ids = ["d1", "d2", "d10", "d20", "a", "b", "zz", "x9"]
    query_ids = [f"q{i}" for i in range(len(matrix))]
    scores = np.array(matrix, dtype=np.float32)
    full = {q: dict(zip(doc_ids, map(float, row), strict=True)) for q, row in zip(query_ids, matrix, strict=True)}
    qrels = {q: {doc_ids[(i * 3 + j) % 8]: 1 + j for j in range(3)} for i, q in enumerate(query_ids)}
    metrics = [f"{name}@{k}" for name in ("ndcg", "recall", "map", "mrr", "hit")]
    assert evaluate(top_k_run(scores, query_ids, doc_ids, k), qrels, metrics) == evaluate(full, qrels, metrics)


def test_bm25_stop_words_and_stemmer() -> None:
    documents = [Document("1", "the flow of heat in slabs"), Document("2", "supersonic flows over wings")]
    plain = BM25Index(documents)
    # "the" and "of" are stop words: a query of only those matches nothing.
    assert not plain.score(["the of"]).any()
    # Without stemming "flows" matches document 2 only; with it, both.
    assert (plain.score(["flows"])[0] > 0).tolist() == [False, True]
    stemmed = BM25Index(documents, BM25Settings(stemmer="english"))
    assert (stemmed.score(["flows"])[0] > 0).tolist() == [True, True]
    run = stemmed.search([Query("q", "heat slab")], top_k=1)
    assert list(run["q"]) == ["1"]


@pytest.mark.slow
def test_bm25_on_cranfield_matches_the_reference(tmp_path: Path) -> None:
    report = run_retrieval_baseline("bm25", tmp_path, split="all")
    assert report["num_queries"] == 225 and report["num_documents"] == 1400
    for name, reference in BM25_REFERENCE.items():
        assert abs(report["metrics"][name] - reference) < 0.02, (name, report["metrics"][name])
    # The files on disk give the same figures when read back and rescored.
    run = read_run(tmp_path / "bm25-all.trec")
    qrels = read_qrels(tmp_path / "qrels-all.trec")
    assert len(run) == 225 and all(len(ranking) == 100 for ranking in run.values())
    assert evaluate(run, qrels, list(report["metrics"])) == pytest.approx(report["metrics"], abs=1e-9)
    written = json.loads((tmp_path / "bm25-all.metrics.json").read_text())
    assert written["metrics"] == report["metrics"]
    assert written["settings"]["document_text"] == "title + text"


def test_baseline_and_evaluate_run_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["baseline", "--dataset", "cranfield", "--method", "bm25", "--split", "test",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bm25-test.metrics.json").read_text())
    assert report["num_queries"] == 75
    assert set(read_run(tmp_path / "bm25-test.trec")) == set(read_qrels(tmp_path / "qrels-test.trec"))
    capsys.readouterr()
    assert main(["evaluate-run", "--run", str(tmp_path / "bm25-test.trec"), "--qrels",
                 str(tmp_path / "qrels-test.trec"), "--metrics", "ndcg@10,recall@10,mrr@10,map@10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(report["metrics"], abs=1e-12)
    assert main(["evaluate-run", "--run", str(tmp_path / "bm25-test.trec"), "--qrels",
                 str(tmp_path / "qrels-test.trec")]) == 0
    table = capsys.readouterr().out
    assert f"ndcg@10    {report['metrics']['ndcg@10']:.4f}" in table


def test_commands_report_user_errors_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["baseline", "--dataset", "cranfield", "--method", "sasrec", "--out", str(tmp_path)]) == 2
    assert "does not apply to cranfield" in capsys.readouterr().err
    bad_run = tmp_path / "run.trec"
    bad_run.write_text("1 Q0 12 1 0.5 t\n1 Q0 13 2\n")
    (tmp_path / "qrels.trec").write_text("1 0 12 1\n")
    assert main(["evaluate-run", "--run", str(bad_run), "--qrels", str(tmp_path / "qrels.trec")]) == 2
    assert f"{bad_run}:2: expected 6 fields" in capsys.readouterr().err
    assert main(["evaluate-run", "--run", str(bad_run), "--qrels", str(tmp_path / "qrels.trec"),
                 "--metrics", "ndcg@ten"]) == 2


@pytest.mark.slow
def test_dense_index_ranks_by_cosine() -> None:
    from training.baselines.dense import DenseIndex
    from training.encoder import embed_texts

    documents = [
        Document("wing", "the lift of a wing in a propeller slipstream"),
        Document("heat", "heat conduction in a composite slab"),
        Document("shell", "buckling of thin cylindrical shells under axial load"),
    ]
    index = DenseIndex(documents)
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    run = index.search([Query("q1", "temperature in layered slabs"), Query("q2", "propeller slipstream lift")],
                       top_k=3)
    assert next(iter(run["q1"])) == "heat" and next(iter(run["q2"])) == "wing"
    query = embed_texts(["temperature in layered slabs"], show_progress=False)[0]
    expected = {d.doc_id: float(index.embeddings[i] @ query) for i, d in enumerate(documents)}
    assert run["q1"] == pytest.approx(expected, abs=1e-5)


def test_beauty_options_are_typed_before_the_hand_over() -> None:
    from training.commands.baseline import _parse_options
    from training.errors import ConfigError

    assert _parse_options(["epochs=5", "lr=1e-3", "exclude_history=true", "items_path=data/x.jsonl.gz"]) == {
        "epochs": 5, "lr": 0.001, "exclude_history": True, "items_path": "data/x.jsonl.gz"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_options(["epochs"])
