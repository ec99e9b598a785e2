"""Amazon P5 reader: the vendored Beauty files, the text template, splits and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from training.config import build_config
from training.data.amazon import (
    AmazonItem,
    AmazonSettings,
    ItemTextSettings,
    item_text,
    items_as_documents,
    leave_one_out,
    load_amazon,
    read_items,
    read_user_sequences,
    write_items_corpus,
)
from training.data.corpus import read_corpus_jsonl
from training.errors import ConfigError, DataFormatError


@pytest.fixture(scope="module")
def beauty():
    return load_amazon()


@pytest.fixture(scope="module")
def beauty_splits(beauty):
    return leave_one_out(beauty)


def _write(path: Path, lines: list[str], compress: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _item(asin: str, **fields) -> str:
    return json.dumps({"asin": asin, **fields})


# --- the real vendored files ------------------------------------------------------------------


def test_beauty_counts_match_the_paper(beauty):
    assert len(beauty.items) == 12_101
    assert len(beauty.sequences) == 22_363
    assert beauty.num_interactions == 198_502
    lengths = [len(s.items) for s in beauty.sequences]
    assert min(lengths) == 5 and max(lengths) == 204
    # Items stay in file order, which is P5 id order on Beauty.
    assert [item.p5_id for item in beauty.items.values()] == list(range(1, 12_102))
    assert len({item.first_category_path for item in beauty.items.values()}) == 225


def test_beauty_splits_sizes_and_protocol(beauty, beauty_splits):
    splits = beauty_splits
    assert len(splits.valid) == len(splits.test) == 22_363
    # Every prefix of the training items (all but the last two) predicts the next item.
    assert len(splits.train) == 198_502 - 3 * 22_363 == 131_413
    assert sum(len(s) for s in splits.train_sequences.values()) == 198_502 - 2 * 22_363
    first = beauty.sequences[0]
    assert first.items == ("B004756YJA", "B004ZT0SSG", "B0020YLEYK", "7806397051", "B002WLWX82")
    assert splits.test[0].history == first.items[:-1] and splits.test[0].target == first.items[-1]
    assert splits.valid[0].history == first.items[:-2] and splits.valid[0].target == first.items[-2]
    user_train = [e for e in splits.train if e.user_id == first.user_id]
    assert [(e.history, e.target) for e in user_train] == [
        (first.items[:1], first.items[1]),
        (first.items[:2], first.items[2]),
    ]
    # Histories are not truncated (a model cuts them to what it reads); the longest user has 204 items.
    longest = max(beauty.sequences, key=lambda s: len(s.items))
    test_example = next(e for e in splits.test if e.user_id == longest.user_id)
    assert test_example.history == longest.items[:-1] and len(test_example.history) == 203


def test_default_text_template(beauty):
    opi = beauty.items["B004756YJA"]
    assert item_text(opi) == (
        "title: OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce, brand: OPI, "
        "category: Beauty, Makeup, Nails, Nail Polish"
    )
    # Brand "Unknown" is P5's placeholder: the segment is skipped.
    skin79 = beauty.items["B0020YLEYK"]
    assert skin79.brand == "Unknown"
    assert item_text(skin79) == (
        "title: SKIN79 The Prestige Beblesh Balm BB Cream Diamond Collection, "
        "category: Beauty, Skin Care, Face, Creams & Moisturizers"
    )
    untitled = [item for item in beauty.items.values() if item.title is None]
    assert len(untitled) == 7
    assert all(not item_text(item).startswith("title:") for item in untitled)


def test_custom_template_and_typed_settings():
    item = AmazonItem("A1", 7, "Lip Balm", "Unknown", (("Beauty", "Lips"),), "Beauty,Lips")
    text = build_config(ItemTextSettings, {"segments": ["{title} by {brand}", "[{category}]"],
                                           "separator": " ", "category_separator": " > ",
                                           "unknown_brands": []})
    assert item_text(item, text) == "Lip Balm by Unknown [Beauty > Lips]"
    with pytest.raises(ConfigError, match="unknown field"):
        ItemTextSettings(segments=("{description}",))
    with pytest.raises(ConfigError):
        build_config(AmazonSettings, {"max_history": 20})  # the history-text recommender's, removed


def test_documents_and_corpus_jsonl(beauty, tmp_path):
    documents = items_as_documents(beauty)
    assert len(documents) == 12_101
    doc = documents[0]
    assert doc.doc_id == "B004756YJA"
    assert doc.category == "Beauty,Makeup,Nails,Nail Polish"
    assert doc.metadata["p5_id"] == 1 and doc.metadata["brand"] == "OPI"
    path = tmp_path / "beauty.jsonl.gz"
    assert write_items_corpus(beauty, path) == 12_101
    assert read_corpus_jsonl(path) == documents


# --- bad input ----------------------------------------------------------------------------------


def test_small_files_plain_and_gzip(tmp_path):
    lines = [_item("a", title="A"), _item("b"), _item("c")]
    items = _write(tmp_path / "items.jsonl.gz", lines, compress=True)
    seqs = _write(tmp_path / "seq.txt", ["u1 a b c", "", "u2 c b a b"])
    dataset = load_amazon(AmazonSettings(items_path=items, sequences_path=seqs))
    assert list(dataset.items) == ["a", "b", "c"]
    splits = leave_one_out(dataset)
    assert [(e.history, e.target) for e in splits.test] == [(("a", "b"), "c"), (("c", "b", "a"), "b")]
    # u1 has one training item (no example); u2's training items are c, b.
    assert [(e.history, e.target) for e in splits.train] == [(("c",), "b")]
    assert splits.train_sequences == {"u1": ("a",), "u2": ("c", "b")}


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        ([_item("a"), json.dumps({"title": "no asin"})], 2, "missing or empty field 'asin'"),
        ([_item("a"), _item("  ")], 2, "missing or empty field 'asin'"),
        ([_item("a"), _item("a")], 2, "duplicate asin"),
        (["{not json"], 1, "not valid JSON"),
        ([_item("a", p5_id="one")], 1, "p5_id"),
        ([_item("a", categories="Beauty")], 1, "categories"),
    ],
)
def test_bad_items(tmp_path, lines, line, message):
    path = _write(tmp_path / "items.jsonl", lines)
    with pytest.raises(DataFormatError, match=message) as info:
        read_items(path)
    assert info.value.line == line and info.value.path == path
    assert f"{path}:{line}" in str(info.value)


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "items.jsonl.gz"
    path.write_bytes(gzip.compress(_item("a").encode() + b"\n" + b'{"asin": "b\xff\xfe"}\n'))
    with pytest.raises(DataFormatError, match="undecodable") as info:
        read_items(path)
    assert info.value.line == 2
    seqs = tmp_path / "seq.txt"
    seqs.write_bytes(b"u1 a a a\nu2 \xe9 a a\n")
    with pytest.raises(DataFormatError, match="undecodable") as info:
        read_user_sequences(seqs)
    assert info.value.line == 2


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        (["u1 a b c", "u2 a b"], 2, "needs at least 3"),
        (["u1 a b c", "u2 a zz c"], 2, "unknown item 'zz'"),
        (["u1 a b c", "u1 a b c"], 2, "duplicate user"),
    ],
)
def test_bad_sequences(tmp_path, lines, line, message):
    items = read_items(_write(tmp_path / "items.jsonl", [_item("a"), _item("b"), _item("c")]))
    path = _write(tmp_path / "seq.txt", lines)
    with pytest.raises(DataFormatError, match=message) as info:
        read_user_sequences(path, items)
    assert info.value.line == line and str(path) in str(info.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        read_items(tmp_path / "absent.jsonl")
    broken = tmp_path / "items.jsonl.gz"
    broken.write_bytes(gzip.compress(("\n".join(_item(f"a{i}") for i in range(500))).encode())[:200])
    with pytest.raises(DataFormatError):
        read_items(broken)
