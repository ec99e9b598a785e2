"""Any SMART collection by its folder: tiny collections in CISI's, Cranfield's and MED's layouts written
to tmp_path, the real vendored Cranfield, the seeded query split, the retrieval task and the CLI."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from lmindexer.cli import main
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
from training.downstream.experiment import cranfield_task, load_task, smart_task
from training.errors import ConfigError, DataFormatError

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


def test_too_few_judged_queries_is_a_data_error(cisi: Path) -> None:
    (cisi / "TINY.REL").write_text("1 1 0 0\n2 4 0 0\n")
    with pytest.raises(DataFormatError, match="2 queries are too few to split"):
        smart_task(cisi)


def test_smart_task_from_a_folder(cisi: Path) -> None:
    task = smart_task(cisi)
    assert (task.kind, task.name, task.loader) == ("retrieval", "tiny", "smart")
    assert len(task.documents) == 12
    split, _ = collection_query_split(read_smart_collection(cisi))
    assert list(task.train_queries) == split["train"]
    assert task.eval_sets["valid"].query_ids == split["dev"] and task.eval_sets["test"].query_ids == split["test"]
    assert task.eval_sets["test"].qrels == {q: dict.fromkeys(RELEVANT[q], 1) for q in split["test"]}
    assert task.titles["3"] == "The half-life of scientific literatures"
    assert load_task("smart", cisi) == task
    with pytest.raises(ConfigError, match="needs the collection's folder"):
        load_task("smart")


def test_smart_task_on_cranfields_folder_is_the_cranfield_task() -> None:
    task = smart_task(CRANFIELD)
    assert task == cranfield_task(CRANFIELD)
    assert {name: len(s.query_ids) for name, s in task.eval_sets.items()} == {"valid": 25, "test": 75}


def test_baseline_bm25_on_a_smart_folder(cisi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert main(["baseline", "--smart", str(cisi), "--method", "bm25", "--split", "all", "--out", str(out)]) == 0
    assert "tiny all (7 queries), bm25:" in capsys.readouterr().out
    report = json.loads((out / "bm25-all.metrics.json").read_text())
    assert (report["dataset"], report["num_queries"], report["num_documents"]) == ("tiny", 7, 12)
    assert report["collection"]["qrels_layout"] == "query doc 0 0"
    assert report["settings"]["split_sizes"] == {"train": 4, "dev": 1, "test": 2}
    # Each query shares its subject's words with its first relevant document only.
    assert report["metrics"]["mrr@10"] == 1.0
    run = (out / "bm25-all.trec").read_text().splitlines()
    assert run[0].split()[:4] == ["1", "Q0", "1", "1"]
    assert {line.split()[0] for line in (out / "qrels-all.trec").read_text().splitlines()} == set(RELEVANT)
    assert main(["baseline", "--smart", str(cisi), "--method", "bm25", "--split", "test", "--out", str(out)]) == 0
    assert json.loads((out / "bm25-test.metrics.json").read_text())["num_queries"] == 2


def test_smart_options_refuse_bad_combinations(cisi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["baseline", "--smart", str(cisi), "--dataset", "cranfield", "--method", "bm25", "--out", "x"],
                 ["finetune", "--smart", str(cisi), "--dataset", "cranfield", "--ids", "i", "--out", "o"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        assert "not allowed with argument --smart" in capsys.readouterr().err
    assert main(["baseline", "--smart", str(cisi), "--method", "sasrec", "--out", str(tmp_path)]) == 2
    assert "does not apply to a SMART collection" in capsys.readouterr().err
    assert main(["baseline", "--smart", str(tmp_path / "none"), "--method", "bm25", "--out", str(tmp_path)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["finetune", "--smart", str(cisi), "--task", "recommendation", "--ids", "i", "--out", "o"]) == 2
    assert "--smart names a retrieval collection" in capsys.readouterr().err


def test_finetune_on_a_smart_folder_records_the_collection(cisi: Path, tmp_path: Path) -> None:
    """finetune --smart writes a finetune.json that names the collection and rebuilds the same task."""
    import numpy as np

    from training.indexing.id_table import write_ids_jsonl

    ids = tmp_path / "ids"
    ids.mkdir()
    codes = np.array([[i % 3, i // 3, 0] for i in range(12)])  # hc-like IDs of the 12 documents, no indexer network
    write_ids_jsonl(ids / "ids.jsonl", [str(i) for i in range(1, 13)], codes)
    (ids / "run.json").write_text(json.dumps({"method": "hc", "codebook_sizes": [3, 4]}))
    out = tmp_path / "model"
    assert main(["finetune", "--smart", str(cisi), "--ids", str(ids), "--out", str(out), "--preset", "tiny",
                 "--set", "steps=1", "--no-progress"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert (record["dataset"], record["collection"], record["data_dir"]) == ("smart", "tiny", str(cisi.resolve()))
    assert "7 queries with a relevant judgment" in record["query_split"]
    assert load_task(record["dataset"], record["data_dir"]) == smart_task(cisi)  # what evaluate and export read
