"""SMART readers on the real vendored Cranfield files, and on broken copies written to tmp_path."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from training.data.smart import (
    cranfield_query_split,
    read_cranfield,
    read_smart_documents,
    read_smart_qrels,
    read_smart_queries,
)
from training.errors import DataFormatError

CRANFIELD = Path(__file__).resolve().parents[2] / "data" / "cranfield"


@pytest.fixture(scope="module")
def cranfield():
    return read_cranfield(CRANFIELD)


def test_counts(cranfield) -> None:
    assert len(cranfield.documents) == 1400
    assert len(cranfield.queries) == 225
    assert sum(len(judged) for judged in cranfield.qrels.values()) == 1837
    assert [d.doc_id for d in cranfield.documents[:2]] == ["1", "2"]
    assert {q.query_id for q in cranfield.queries} == {str(i) for i in range(1, 226)} == set(cranfield.qrels)


def test_files_really_are_crlf() -> None:
    assert b"\r\n" in (CRANFIELD / "cran.qry").read_bytes()[:200]


def test_ordinal_qrel_trap(cranfield) -> None:
    queries = {q.query_id: q for q in cranfield.queries}
    # The third query in cran.qry has .I 004 (there is no .I 003). cranqrel's "3 5 3" is about
    # it: heat conduction in composite slabs, and document 5 is on heat conduction in a slab.
    assert queries["3"].metadata["smart_id"] == "004"
    assert queries["3"].text.startswith("what problems of heat conduction in composite slabs")
    assert cranfield.qrels["3"]["5"] == 2  # code 3 -> gain 2
    doc_5 = next(d for d in cranfield.documents if d.doc_id == "5")
    assert "heat conduction" in doc_5.text and "slab" in doc_5.text
    # The last query is .I 365, ordinal 225, and the qrels number it 225.
    assert queries["225"].metadata["smart_id"] == "365"
    assert "lift-drag ratios at mach numbers above 5" in queries["225"].text
    assert "1379" in cranfield.qrels["225"]


def test_graded_gains(cranfield) -> None:
    gains = [gain for judged in cranfield.qrels.values() for gain in judged.values()]
    # cranqrel codes: 128 x 1, 387 x 2, 734 x 3, 363 x 4, 225 x -1.
    assert {g: gains.count(g) for g in sorted(set(gains))} == {0: 225, 1: 363, 2: 734, 3: 387, 4: 128}
    assert cranfield.qrels["1"]["184"] == 3  # "1 184 2"
    assert cranfield.qrels["225"]["1188"] == 0  # "225 1188 -1": judged, not relevant


def test_document_text_is_title_then_abstract(cranfield) -> None:
    first = cranfield.documents[0]
    title = "experimental investigation of the aerodynamics of a wing in a slipstream ."
    assert first.text.startswith(f"{title}\n{title} an experimental study of a wing")
    assert first.metadata["authors"] == "brenckman,m."
    assert "\r" not in first.text
    untitled = read_smart_documents(CRANFIELD / "cran.all.1400", include_title=False)[0]
    assert untitled.text.startswith(f"{title} an experimental study")
    # 471 and 995 are empty records of the real collection: kept, or an error on request.
    assert [d.doc_id for d in cranfield.documents if not d.text] == ["471", "995"]
    with pytest.raises(DataFormatError, match="document '471': empty text"):
        read_smart_documents(CRANFIELD / "cran.all.1400", allow_empty=False)


def test_stray_field_markers_inside_an_abstract_stay_text(cranfield) -> None:
    doc_240 = next(d for d in cranfield.documents if d.doc_id == "240")
    assert doc_240.metadata["authors"] == "dean r. chapman"
    assert "injected into the separated region . .A application to turbulent" in doc_240.text


def test_split_is_fixed_disjoint_and_complete(cranfield) -> None:
    ids = [q.query_id for q in cranfield.queries]
    split = cranfield_query_split(ids)
    assert {name: len(part) for name, part in split.items()} == {"train": 125, "dev": 25, "test": 75}
    assert sorted((q for part in split.values() for q in part), key=int) == sorted(ids, key=int)
    assert split == cranfield_query_split(list(reversed(ids)))  # independent of the input order
    # Pinned: the documented seed must always give this split.
    assert split["test"][:8] == ["1", "6", "8", "13", "16", "17", "18", "19"]
    assert split["dev"][:3] == cranfield_query_split(ids)["dev"][:3]
    assert cranfield_query_split(ids, seed=1) != split
    with pytest.raises(ValueError, match="do not add up"):
        cranfield_query_split(ids, sizes={"train": 100, "test": 100})


def test_gzip_copies_read_the_same(tmp_path: Path, cranfield) -> None:
    for name in ("cran.all.1400", "cran.qry", "cranqrel"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((CRANFIELD / name).read_bytes()))
    again = read_cranfield(tmp_path)
    assert again == cranfield


def copy_with(tmp_path: Path, name: str, transform) -> Path:
    for other in ("cran.all.1400", "cran.qry", "cranqrel"):
        shutil.copy(CRANFIELD / other, tmp_path / other)
    path = tmp_path / name
    path.write_bytes(transform(path.read_bytes()))
    return path


def test_qrel_with_unknown_document_names_file_and_line(tmp_path: Path) -> None:
    copy_with(tmp_path, "cranqrel", lambda raw: raw.replace(b"1 29 2", b"1 1401 2", 1))
    with pytest.raises(DataFormatError, match=r"cranqrel:2: unknown document id '1401'"):
        read_cranfield(tmp_path)


def test_qrel_with_query_beyond_the_ordinals(tmp_path: Path) -> None:
    # 365 is a valid .I number but not an ordinal: the reader must not confuse the two.
    path = copy_with(tmp_path, "cranqrel", lambda raw: raw + b"\r\n365 12 2")
    with pytest.raises(DataFormatError, match=r"cranqrel:1838: unknown query number 365"):
        read_smart_qrels(path, query_ids={q.query_id for q in read_smart_queries(tmp_path / "cran.qry")})


@pytest.mark.parametrize(
    ("line", "message"),
    [(b"1 5 7", "relevance code 7"), (b"1 5", "expected 3 fields"), (b"1 5 x", "not an integer"),
     (b"1 d5 2", "'d5' is not a positive integer id"), (b"1 184 3", "judges document 184 twice")],
)
def test_bad_qrel_lines(tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "cranqrel"
    path.write_bytes(b"1 184 2 \r\n" + line + b"\r\n")
    with pytest.raises(DataFormatError, match=message) as caught:
        read_smart_qrels(path)
    assert (caught.value.path, caught.value.line) == (path, 2)


def test_bad_query_records(tmp_path: Path) -> None:
    path = tmp_path / "cran.qry"
    path.write_bytes(b".I 001\r\n.W\r\nfirst query .\r\n.I 002\r\n.W\r\n\r\n")
    with pytest.raises(DataFormatError, match=r"cran\.qry:4: query \.I 002: empty text"):
        read_smart_queries(path)
    path.write_bytes(b"stray text\r\n.I 001\r\n.W\r\nq\r\n")
    with pytest.raises(DataFormatError, match=r"cran\.qry:1: text outside a field"):
        read_smart_queries(path)


def test_latin1_bytes_are_read_not_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cran.qry"
    path.write_bytes(b".I 1\r\n.W\r\nflow past a c\xf4ne .\r\n")
    assert read_smart_queries(path)[0].text == "flow past a c\u00f4ne ."
