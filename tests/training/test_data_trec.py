"""Queries (TSV / JSONL), qrels and runs (TREC): reading, deterministic writing, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.trec import (
    Query,
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_queries_tsv,
    write_run,
)
from training.errors import DataFormatError


def test_tsv_and_jsonl_queries(tmp_path: Path) -> None:
    tsv = tmp_path / "q.tsv"
    tsv.write_text("1\twhat is lift\r\nq2\tshock\twaves\n\n", encoding="utf-8")
    assert read_queries(tsv) == [Query("1", "what is lift"), Query("q2", "shock\twaves")]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"query_id": 3, "text": "boundary layer", "lang": "en"}\n', encoding="utf-8")
    assert read_queries(jsonl) == [Query("3", "boundary layer", {"lang": "en"})]
    out = tmp_path / "out.tsv"
    write_queries_tsv(out, [Query("9", "multi\n line  text")])
    assert out.read_text() == "9\tmulti line text\n"


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("1\tok\n2 no tab here\n", 2, "no tab"),
        ("1\tok\n2\t   \n", 2, "empty text"),
        ("1\tok\n1\tagain\n", 2, "duplicate query_id '1'"),
        ('{"query_id": "1", "text": "ok"}\n{"text": "x"}\n', 2, "missing field 'query_id'"),
        ('{"query_id": "1", "text": "ok"}\n{"query_id": "2", "text": ""}\n', 2, "non-empty string"),
        ('{"query_id": "1", "text": "ok"}\n{"query_id": "2", \n', 2, "invalid JSON"),
    ],
)
def test_bad_queries(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = tmp_path / "queries.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=message) as caught:
        read_queries(path)
    assert (caught.value.path, caught.value.line) == (path, line)


def test_qrels_round_trip_and_doc_check(tmp_path: Path) -> None:
    qrels = {"10": {"d2": 1, "d10": 3}, "2": {"x": 0}}
    path = tmp_path / "qrels.trec"
    write_qrels(path, qrels)
    # Numeric ids by value ("2" before "10"), other ids as strings ("d10" before "d2").
    assert path.read_text() == "2 0 x 0\n10 0 d10 3\n10 0 d2 1\n"
    assert read_qrels(path) == qrels
    with pytest.raises(DataFormatError, match=r"qrels\.trec:2: unknown doc_id 'd10'"):
        read_qrels(path, doc_ids={"x", "d2"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1 0 d1 1\n1 0 d2\n", "expected 4 fields"),
        ("1 0 d1 1\n1 0 d2 high\n", "not an integer"),
        ("1 0 d1 1\n1 0 d1 2\n", "twice"),
    ],
)
def test_bad_qrels(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as caught:
        read_qrels(path)
    assert caught.value.line == 2


def test_run_writing_is_deterministic_and_in_trec_eval_order(tmp_path: Path) -> None:
    run = {"q10": {"b": 0.5}, "2": {"d2": 1.0, "d10": 1.0, "a": 2.0, "z": 0.1 + 0.2}}
    path = tmp_path / "run.trec"
    write_run(path, run, tag="test", depth=3)
    assert path.read_text().splitlines() == [
        "2 Q0 a 1 2.0 test",
        "2 Q0 d2 2 1.0 test",  # tie on 1.0: doc_id descending, "d2" > "d10"
        "2 Q0 d10 3 1.0 test",
        "q10 Q0 b 1 0.5 test",
    ]
    # Scores round-trip exactly (0.1 + 0.2 is not 0.3), so writing creates no new ties.
    write_run(path, run)
    assert read_run(path) == run
    first = path.read_bytes()
    write_run(path, dict(reversed(list(run.items()))))
    assert path.read_bytes() == first


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1 Q0 d1 1 2.5 t\n1 Q0 d2 2 2.0\n", "expected 6 fields"),
        ("1 Q0 d1 1 2.5 t\n1 Q0 d2 2 high t\n", "is not a number"),
        ("1 Q0 d1 1 2.5 t\n1 Q0 d2 2 nan t\n", "not finite"),
        ("1 Q0 d1 1 2.5 t\n1 Q0 d2 second 1.0 t\n", "rank 'second'"),
        ("1 Q0 d1 1 2.5 t\n1 Q0 d1 2 1.0 t\n", "twice"),
        ("1 Q0 d1 1 2.5 t\n1 Q0 d\xe9 2 1.0 t\n", "cannot decode"),
    ],
)
def test_bad_runs(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "run.txt"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataFormatError, match=message) as caught:
        read_run(path)
    assert (caught.value.path, caught.value.line) == (path, 2)
