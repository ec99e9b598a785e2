"""JSONL corpora: round trip, gzip, metadata kept, and errors that name the file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from training.data.corpus import Document, read_corpus_jsonl, write_corpus_jsonl
from training.errors import DataFormatError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_round_trip_keeps_metadata_and_category(tmp_path: Path) -> None:
    documents = [
        Document("B01", "Nail polish, red", category="Beauty,Nails", metadata={"brand": "OPI", "rank": 3}),
        Document("B02", "Lip balm — café crème", metadata={"tags": ["lips", "care"]}),
    ]
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        path = tmp_path / name
        write_corpus_jsonl(path, documents)
        assert read_corpus_jsonl(path) == documents
    # The .gz name really is gzip on disk, and no temporary file is left behind.
    assert (tmp_path / "corpus.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "corpus.jsonl.gz"]


def test_reads_gzip_whatever_the_name_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "corpus.data"
    path.write_bytes(gzip.compress(b'{"doc_id": 7, "text": "seven", "color": "red"}\n\n'))
    assert read_corpus_jsonl(path) == [Document("7", "seven", metadata={"color": "red"})]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "no id"}', "missing field 'doc_id'"),
        ('{"doc_id": "d2"}', "missing field 'text'"),
        ('{"doc_id": "d2", "text": "   "}', "empty text"),
        ('{"doc_id": "d2", "text": 5}', "'text' must be a string"),
        ('{"doc_id": "", "text": "x"}', "'doc_id' must be a non-empty string"),
        ('{"doc_id": "d2", "text": "x", "category": 3}', "'category' must be a string"),
        ('{"doc_id": "d2", "text": "x"', "invalid JSON"),
        ('["d2", "x"]', "expected a JSON object"),
        ('{"doc_id": "d1", "text": "again"}', "duplicate doc_id 'd1' (first on line 1)"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ['{"doc_id": "d1", "text": "fine"}', line])
    with pytest.raises(DataFormatError) as caught:
        read_corpus_jsonl(path)
    assert caught.value.path == path
    assert caught.value.line == 2
    assert str(caught.value).startswith(f"{path}:2: ")
    assert message in str(caught.value)


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"doc_id": "a", "text": "ok"}).encode()
    path.write_bytes(good + b"\n" + b'{"doc_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataFormatError, match=r"latin1\.jsonl:2: cannot decode byte b'\\xe9'"):
        read_corpus_jsonl(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file"):
        read_corpus_jsonl(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataFormatError, match="no documents"):
        read_corpus_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataFormatError, match="corrupt gzip"):
        read_corpus_jsonl(tmp_path / "broken.jsonl.gz")


def test_metadata_cannot_shadow_reserved_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        write_corpus_jsonl(tmp_path / "x.jsonl", [Document("d", "t", metadata={"text": "other"})])
