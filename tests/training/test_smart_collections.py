"""Any SMART collection by its folder: tiny collections in CISI's, Cranfield's and MED's layouts written
to tmp_path, the real vendored Cranfield, the seeded query split."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from training.data.smart import (
    SMART_SPLIT_FRACTIONS,
    collection_query_split,
    cranfield_query_split,
    find_smart_files,
    read_cranfield,
    read_smart_collection,
    smart_query_split,
    split_sizes,
)
from training.errors import DataFormatError

CRANFIELD = Path(__file__).resolve().parents[2] / "data" / "cranfield"

# (title, authors, text) of twelve documents, each on its own subject so that BM25 can tell them apart.
DOCUMENTS = [
    ("Editions of the Dewey Decimal Classification", ["Comaromi, J.P."],
     "A history of the Dewey decimal classification from the first edition to the eighteenth."),
    ("Use made of technical libraries", ["Slater, M."],
     "An analysis of acts of use in technical libraries of the United Kingdom."),
    ("The half-life of scientific literatures", ["Burton, R.E.", "Kebler, R.W."],
     "The obsolescence of scientific literature compared with radioactive decay."),
    ("Machine translation of natural languages", ["Bar-Hillel, Y."],
     "Can a computer translate Russian into English with the nuances of meaning intact?"),
    ("Automatic medical diagnosis", ["Lusted, L.B."],
     "Computers that help physicians in diagnosis from symptoms and clinical records."),
    ("Costs of automated library systems", ["Kilgour, F.G."],
     "What an automated catalog and circulation system costs a university library."),
    ("Indexing chemical structures", ["Lynch, M.F."],
     "Encoding and matching the structural formulas of chemical compounds by computer."),
    ("Training information specialists", ["Taylor, R.S."],
     "Education programmes that prepare librarians and information specialists."),
    ("Citation indexes for science", ["Garfield, E."],
     "A citation index lets a scientist follow the papers that cite an earlier paper."),
    ("Relevance judgments in retrieval tests", ["Cuadra, C.A.", "Katter, R.V."],
     "How judges decide whether a document is relevant, and how consistent they are."),
    ("Optical character recognition of print", ["Rabinow, J."],
     "Reading printed text into computer-ready form by image recognition."),
    ("Coordinate indexing with descriptors", ["Mooers, C.N."],
     "Descriptors as a controlled language for coordinate indexing and searching."),
]
# (.I number, text); the .I numbers have gaps, so ordinal and .I numbering differ.
QUERIES = [
    ("1", "history of the dewey decimal classification"),
    ("2", "machine translation of russian by computer"),
    ("5", "computers in medical diagnosis"),
    ("8", "cost of automated library catalog and circulation"),
    ("9", "citation index of scientific papers"),
    ("10", "how consistent are relevance judgments"),
    ("12", "recognition of printed text"),
    ("14", "a query nobody judged"),
]
# .I number -> relevant document ids (query 14 has no judgment)
RELEVANT = {"1": ["1"], "2": ["4"], "5": ["5"], "8": ["6", "2"], "9": ["9", "3"], "10": ["10"], "12": ["11"]}


def write_cisi(folder: Path, name: str = "TINY") -> Path:
    """A collection in CISI's layout: NAME.ALL (one '.A' per author, '.X' cross-references, '.K' and '.C' on
    one record), NAME.QRY, NAME.REL ('query doc 0 0.000000', tab-separated), CRLF line endings."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for number, (title, authors, text) in enumerate(DOCUMENTS, start=1):
        lines += [f".I {number}", ".T", title]
        for author in authors:
            lines += [".A", author]
        if number == 7:
            lines += [".B", "1972"]
        lines += [".W", "   " + text]
        if number == 7:
            lines += [".K", "chemistry, structures", ".C", "3.42 3.70"]
        lines += [".X", f"{number}\t5\t{number}", f"1\t1\t{number}"]
    (folder / f"{name}.ALL").write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    queries = [line for number, text in QUERIES for line in (f".I {number}", ".W", text, "")]
    (folder / f"{name}.QRY").write_bytes("\r\n".join(queries).encode("latin-1"))
    rel = [f"{query:>6} {doc:>5}\t0\t0.000000" for query, docs in RELEVANT.items() for doc in docs]
    (folder / f"{name}.REL").write_bytes(("\r\n".join(rel) + "\r\n").encode("latin-1"))
    return folder


def write_cranfield_layout(folder: Path) -> Path:
    """A collection in Cranfield's layout: aero.all.12, aero.qry (.I 001, 002, 004 ...), aeroqrel
    ('query doc code' with the query's ORDINAL, codes 1..4 and -1), and a readme that is not a qrels file."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for number, (title, authors, text) in enumerate(DOCUMENTS, start=1):
        lines += [f".I {number}", ".T", title.lower(), ".A", authors[0].lower(), ".B", "report 1962", ".W",
                  f"{title.lower()} . {text.lower()}"]
    (folder / "aero.all.12").write_text("\n".join(lines) + "\n", encoding="latin-1")
    numbers = ["001", "002", "004", "007", "009", "010"]  # ordinal 3 is .I 004: no query has .I 3
    queries = [line for number, (_, text) in zip(numbers, QUERIES[:6], strict=True)
               for line in (f".I {number}", ".W", text)]
    (folder / "aero.qry").write_text("\n".join(queries) + "\n", encoding="latin-1")
    (folder / "aeroqrel").write_text("1 1 1\n2 4 2\n3 5 3\n4 6 4\n4 2 -1\n5 9 1\n6 10 2\n", encoding="latin-1")
    (folder / "aeroqrel.readme").write_text("1 = complete answer ... 4 = minimum interest\n", encoding="latin-1")
    return folder


@pytest.fixture()
def cisi(tmp_path: Path) -> Path:
    return write_cisi(tmp_path / "cisi")


def test_cisi_layout_documents_queries_and_binary_qrels(cisi: Path) -> None:
    collection = read_smart_collection(cisi)
    assert collection.name == "tiny"
    assert [d.doc_id for d in collection.documents] == [str(i) for i in range(1, 13)]
    third = collection.documents[2]
    assert third.text == ("The half-life of scientific literatures\n"
                          "The obsolescence of scientific literature compared with radioactive decay.")
    assert third.metadata == {"title": "The half-life of scientific literatures",
                              "authors": "Burton, R.E.; Kebler, R.W.", "source": ""}
    seventh = collection.documents[6]
    # .X cross-references, .K keywords and .C categories are skipped; .B is the source
    assert seventh.text.endswith("chemical compounds by computer.") and "3.42" not in seventh.text
    assert seventh.metadata["source"] == "1972"
    assert all("\t" not in d.text and ".X" not in d.text for d in collection.documents)
    # CISI's qrels number queries by .I: ids are the .I numbers, 12 included (there are only 8 queries)
    assert [q.query_id for q in collection.queries] == [number for number, _ in QUERIES]
    assert next(q for q in collection.queries if q.query_id == "12").text == "recognition of printed text"
    assert collection.qrels == {q: dict.fromkeys(docs, 1) for q, docs in RELEVANT.items()}
    assert collection.judged_query_ids == list(RELEVANT)
    assert collection.details["qrels_layout"] == "query doc 0 0"
    assert collection.details["query_numbering"] == "smart_id"


def test_cranfield_layout_ordinal_numbering_and_graded_gains(tmp_path: Path) -> None:
    collection = read_smart_collection(write_cranfield_layout(tmp_path / "aero"))
    assert collection.name == "aero"
    assert collection.details == {"folder": str(tmp_path / "aero"), "documents": "aero.all.12", "queries": "aero.qry",
                                  "qrels": "aeroqrel", "qrels_layout": "query doc code", "query_numbering": "ordinal"}
    assert [(q.query_id, q.metadata["smart_id"]) for q in collection.queries][:3] == [
        ("1", "001"), ("2", "002"), ("3", "004")]
    assert collection.queries[2].text == "computers in medical diagnosis"
    # gain = 5 - code; -1 is judged, not relevant
    assert collection.qrels == {"1": {"1": 4}, "2": {"4": 3}, "3": {"5": 2}, "4": {"6": 1, "2": 0}, "5": {"9": 4},
                                "6": {"10": 3}}
    assert collection.documents[0].text.startswith("editions of the dewey decimal classification\n")
    assert collection.documents[0].metadata["source"] == "report 1962"


def test_trec_layout_qrels_give_their_relevance_as_gain(tmp_path: Path) -> None:
    folder = tmp_path / "med"
    folder.mkdir()
    (folder / "MED.ALL").write_text(".I 1\n.W\ncorrelation of serum levels\n.I 2\n.W\nrenal failure in children\n")
    (folder / "MED.QRY").write_text(".I 1\n.W\nserum levels\n.I 2\n.W\nkidney failure\n")
    (folder / "MED.REL").write_text("1 0 1 1\n2 0 2 2\n2 0 1 0\n")
    collection = read_smart_collection(folder)
    assert collection.details["qrels_layout"] == "query 0 doc relevance"
    assert collection.qrels == {"1": {"1": 1}, "2": {"2": 2, "1": 0}}
    assert [d.text for d in collection.documents] == ["correlation of serum levels", "renal failure in children"]


def test_real_cranfield_reads_as_before(tmp_path: Path) -> None:
    collection = read_smart_collection(CRANFIELD)
    assert collection == read_cranfield(CRANFIELD)
    assert (len(collection.documents), len(collection.queries)) == (1400, 225)
    assert sum(len(judged) for judged in collection.qrels.values()) == 1837
    assert collection.details["query_numbering"] == "ordinal"  # the ordinal-qrel trap
    assert collection.queries[2].metadata["smart_id"] == "004" and collection.qrels["3"]["5"] == 2
    assert collection_query_split(collection)[0] == cranfield_query_split([q.query_id for q in collection.queries])


def test_gzip_files_and_readmes(cisi: Path, tmp_path: Path) -> None:
    plain = read_smart_collection(cisi)
    rel = cisi / "TINY.REL"
    (cisi / "TINY.REL.gz").write_bytes(gzip.compress(rel.read_bytes()))
    rel.unlink()
    (cisi / "README").write_text("CISI, a tiny copy\n")
    assert find_smart_files(cisi)["qrels"] == cisi / "TINY.REL.gz"
    assert read_smart_collection(cisi) == plain


def test_missing_or_ambiguous_files_are_named(cisi: Path) -> None:
    (cisi / "TINY.REL").unlink()
    with pytest.raises(DataFormatError, match=r"no qrels file: expected a name containing 'qrel' or ending in "
                                              r"'\.rel'.*the folder holds TINY\.ALL, TINY\.QRY") as caught:
        read_smart_collection(cisi)
    assert caught.value.path == cisi
    write_cisi(cisi)
    shutil.copy(cisi / "TINY.QRY", cisi / "extra.qry")
    with pytest.raises(DataFormatError, match=r"2 candidate query files: TINY\.QRY, extra\.qry"):
        read_smart_collection(cisi)
    (cisi / "extra.qry").unlink()
    (cisi / "TINY.QRY.gz").write_bytes(gzip.compress((cisi / "TINY.QRY").read_bytes()))
    with pytest.raises(DataFormatError, match=r"2 candidate query files: TINY\.QRY, TINY\.QRY\.gz"):
        read_smart_collection(cisi)
    with pytest.raises(DataFormatError, match="not a folder"):
        read_smart_collection(cisi / "TINY.ALL")


@pytest.mark.parametrize(
    ("qrels", "message"),
    [("1 0 0 1\n2 0 0 1\n", "both the second and the third 0 on every line"),
     ("1 4 2 1\n", "neither the second nor the third 0"),
     ("1 4 0 x\n", "fourth column 'x' is not a number"),
     ("1 4\n", "expected 3 fields 'query doc code' .* or 4"),
     ("1 4 0 0\n2 4 0\n", r"expected 4 fields \('query doc 0 0' or 'query 0 doc relevance'\), found 3"),
     ("1 4 0 0\n13 2 0 0\n", r"TINY\.REL:2: query number 13 is neither a query's \.I number nor an ordinal \(1\.\.8\)"),
     ("1 4 0 0\n1 4 0 0\n", "query 1 judges document 4 twice"),
     ("1 13 0 0\n", "unknown document id '13'")],
)
def test_bad_qrels_name_the_problem(cisi: Path, qrels: str, message: str) -> None:
    (cisi / "TINY.REL").write_text(qrels)
    with pytest.raises(DataFormatError, match=message):
        read_smart_collection(cisi)


def test_split_is_seeded_disjoint_and_covers_exactly_the_judged_queries(cisi: Path) -> None:
    collection = read_smart_collection(cisi)
    split, rule = collection_query_split(collection)
    judged = collection.judged_query_ids
    assert "14" not in judged and len(judged) == 7
    assert sorted(q for part in split.values() for q in part) == sorted(judged)
    assert sum(len(part) for part in split.values()) == len(judged)  # disjoint
    # 7 x (0.55, 0.11, 0.34) = 3.85, 0.77, 2.38: floors 3, 0, 2, the two left over to train and dev
    assert {name: len(part) for name, part in split.items()} == {"train": 4, "dev": 1, "test": 2}
    assert split == smart_query_split(judged) == smart_query_split(list(reversed(judged)))
    assert "7 queries with a relevant judgment (of 8)" in rule
    ids = [str(i) for i in range(1, 101)]
    assert smart_query_split(ids, seed=1) != smart_query_split(ids)
    assert all(part == sorted(part, key=int) for part in smart_query_split(ids).values())


def test_split_sizes_round_by_largest_remainder() -> None:
    assert split_sizes(225, SMART_SPLIT_FRACTIONS) == {"train": 124, "dev": 25, "test": 76}
    assert split_sizes(76, SMART_SPLIT_FRACTIONS) == {"train": 42, "dev": 8, "test": 26}
    with pytest.raises(ValueError, match="add up to 1"):
        split_sizes(10, {"train": 0.5, "test": 0.4})
    with pytest.raises(ValueError, match="dev would be empty"):
        smart_query_split(["1", "2", "3"])
    with pytest.raises(ValueError, match="unique"):
        smart_query_split(["1", "1", "2", "3", "4", "5"])
