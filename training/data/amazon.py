"""Amazon P5 data (items + user sequences): item text, leave-one-out splits, training examples.

Files (the P5 / TIGER / LMIndexer Beauty split, vendored under `data/amazon-beauty/`):

- items: JSON lines (optionally gzip-compressed), one item a line, with `asin` (required; the id
  used in the sequences), `p5_id`, `title`, `brand`, `categories` (a list of category paths) and
  `first_category_path` (the comma-joined first path). Any other field is kept in
  `AmazonItem.extra` and in the document metadata.
- user sequences: text lines (optionally gzip-compressed) `USER ITEM_1 ITEM_2 ...`, the items in
  time order.

Item text. The official LMIndexer code (`SID/scripts/prepare_data_amazon.py`,
`DATA/rec-data/sqrec_gen.py:text_process`) renders
``"title: {title}, description: {description}, brand: {brand}, price: {price}, category: {c1, c2, ...}"``
and skips missing fields. This split has no description or price, so the default template is
``"title: {title}, brand: {brand}, category: {category}"`` where `category` is the first category
path joined with ``", "``. The template is a tuple of segments (`ItemTextSettings.segments`); a
segment whose fields are all missing or empty is skipped and the rest are joined with
`separator`. Brand ``"Unknown"`` is P5's placeholder for a missing brand (4,647 of 12,101 Beauty
items), so it is treated as missing (`unknown_brands`): the text does not carry a token shared by
a third of the catalogue that says nothing about the item.

Splits (P5 / TIGER protocol, user by user): the last item is the test target, the second-to-last
the validation target, earlier items are training interactions. The validation history is
everything before the validation target, the test history everything before the test target
(the validation item included). Every user needs at least 3 items (one training interaction
plus the two targets). Training examples: every prefix of the training interactions predicts its
next item, i.e. for training items ``s_1..s_m`` the examples are ``(s_1 -> s_2), (s_1 s_2 -> s_3),
..., (s_1..s_{m-1} -> s_m)``: ``m - 1`` examples per user, 131,413 on Beauty, the supervision a
sequence model receives from predicting at every position. Histories are oldest first and not
truncated (a model cuts them to what it reads). The recommenders read this split as arrays
(`training.baselines.recommendation.RecData`).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data.corpus import Document, write_corpus_jsonl
from training.errors import ConfigError, DataFormatError

logger = logging.getLogger(__name__)

#: The vendored Beauty files (a fresh clone of the repository works without ../shared).
BEAUTY_DIR = Path(__file__).resolve().parents[2] / "data" / "amazon-beauty"
BEAUTY_ITEMS = BEAUTY_DIR / "items.jsonl.gz"
BEAUTY_SEQUENCES = BEAUTY_DIR / "user_sequence.txt.gz"

#: Names a text segment may use, e.g. ``"title: {title}"``.
TEXT_FIELDS = ("title", "brand", "category", "categories", "first_category_path", "asin", "p5_id")

_FIELD_PATTERN = re.compile(r"{([^{}]*)}")


@dataclass(frozen=True)
class ItemTextSettings:
    """How an item's text is rendered from its fields (see the module docstring)."""

    segments: tuple[str, ...] = field(
        default=("title: {title}", "brand: {brand}", "category: {category}"),
        metadata={"help": "Text segments, each a format string over the fields "
                          f"{', '.join(TEXT_FIELDS)}; a segment whose fields are all missing is skipped."},
    )
    separator: str = field(default=", ", metadata={"help": "Joins the segments that are kept."})
    category_separator: str = field(
        default=", ", metadata={"help": "Joins the levels of the first category path in {category}."}
    )
    unknown_brands: tuple[str, ...] = field(
        default=("Unknown",),
        metadata={"help": "Brand values treated as missing (P5 writes 'Unknown' for a missing brand)."},
    )

    def __post_init__(self) -> None:
        if not self.segments:
            raise ConfigError("segments must name at least one text segment")
        for segment in self.segments:
            for name in _FIELD_PATTERN.findall(segment):
                if name not in TEXT_FIELDS:
                    raise ConfigError(
                        f"text segment {segment!r} uses unknown field {{{name}}}; "
                        f"known: {', '.join(TEXT_FIELDS)}"
                    )


@dataclass(frozen=True)
class AmazonSettings:
    """Where the Amazon files are."""

    items_path: Path = field(default=BEAUTY_ITEMS, metadata={"help": "Items, JSON lines (.gz or plain)."})
    sequences_path: Path = field(
        default=BEAUTY_SEQUENCES,
        metadata={"help": "User sequences, 'USER ITEM ITEM ...' lines (.gz or plain)."},
    )


@dataclass(frozen=True)
class AmazonItem:
    """One catalogue item as read from the items file."""

    asin: str
    p5_id: int | None
    title: str | None
    brand: str | None
    categories: tuple[tuple[str, ...], ...]
    first_category_path: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UserSequence:
    """A user's items in time order."""

    user_id: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class RecExample:
    """Predict `target` from `history` (item asins, oldest first)."""

    user_id: str
    history: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class RecSplits:
    """Leave-one-out splits: training examples, one validation and one test example per user.

    `train_sequences` holds each user's training interactions (all items but the last two): models
    that predict at every position (SASRec) train on them directly.
    """

    train: list[RecExample]
    valid: list[RecExample]
    test: list[RecExample]
    train_sequences: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class AmazonDataset:
    """Items (in file order, i.e. P5 id order on Beauty) and user sequences (in file order)."""

    items: dict[str, AmazonItem]
    sequences: list[UserSequence]
    items_path: Path
    sequences_path: Path

    @property
    def num_interactions(self) -> int:
        """All interactions, training and targets together."""
        return sum(len(s.items) for s in self.sequences)

    def item_index(self) -> dict[str, int]:
        """asin -> 1-based dense index in file order (0 is left free for padding)."""
        return {asin: i + 1 for i, asin in enumerate(self.items)}


# ---------------------------------------------------------------------------------------------
# Reading


def open_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its newline); gzip is detected by magic bytes.

    Lines are decoded one by one so that undecodable bytes are reported with their line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if is_gzip else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    message = f"undecodable bytes (not UTF-8): {exc.reason}"
                    raise DataFormatError(path, message, line_no) from exc
                yield line_no, text.rstrip("\r\n")
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a truncated gzip an EOFError
        raise DataFormatError(path, f"cannot read compressed data: {exc}", line_no + 1) from exc


def _optional_str(value: Any, name: str, path: Path, line: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataFormatError(path, f"field {name!r} must be a string, got {type(value).__name__}", line)
    value = value.strip()
    return value or None


def read_items(path: str | Path) -> dict[str, AmazonItem]:
    """Read the items file into asin -> item, in file order.

    Raises DataFormatError (file and line) on invalid JSON, a missing or empty `asin`, a duplicate
    asin, badly typed fields or undecodable bytes.
    """
    path = Path(path)
    items: dict[str, AmazonItem] = {}
    for line_no, line in open_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"not valid JSON: {exc.msg}", line_no) from exc
        if not isinstance(record, dict):
            raise DataFormatError(path, "each line must be a JSON object", line_no)
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin.strip():
            raise DataFormatError(path, "missing or empty field 'asin'", line_no)
        asin = asin.strip()
        if asin in items:
            raise DataFormatError(path, f"duplicate asin {asin!r}", line_no)
        p5_id = record.get("p5_id")
        if p5_id is not None and (not isinstance(p5_id, int) or isinstance(p5_id, bool)):
            raise DataFormatError(path, f"field 'p5_id' must be an integer, got {p5_id!r}", line_no)
        raw_categories = record.get("categories") or []
        if not isinstance(raw_categories, list) or not all(
            isinstance(p, list) and all(isinstance(c, str) for c in p) for p in raw_categories
        ):
            raise DataFormatError(path, "field 'categories' must be a list of lists of strings", line_no)
        categories = tuple(tuple(c.strip() for c in p if c.strip()) for p in raw_categories)
        first_path = _optional_str(record.get("first_category_path"), "first_category_path", path, line_no)
        if first_path is None and categories and categories[0]:
            first_path = ",".join(categories[0])
        known = {"asin", "p5_id", "title", "brand", "categories", "first_category_path"}
        items[asin] = AmazonItem(
            asin=asin,
            p5_id=p5_id,
            title=_optional_str(record.get("title"), "title", path, line_no),
            brand=_optional_str(record.get("brand"), "brand", path, line_no),
            categories=categories,
            first_category_path=first_path,
            extra={k: v for k, v in record.items() if k not in known},
        )
    if not items:
        raise DataFormatError(path, "no items")
    return items


def read_user_sequences(
    path: str | Path, items: Mapping[str, AmazonItem] | None = None
) -> list[UserSequence]:
    """Read `USER ITEM ITEM ...` lines, items in time order.

    Raises DataFormatError (file and line) on a user with fewer than 3 items (leave-one-out needs
    one training item and two targets), a duplicate user, an item not in `items` (when given) or
    undecodable bytes.
    """
    path = Path(path)
    sequences: list[UserSequence] = []
    seen: set[str] = set()
    for line_no, line in open_lines(path):
        parts = line.split()
        if not parts:
            continue
        user, seq = parts[0], tuple(parts[1:])
        if user in seen:
            raise DataFormatError(path, f"duplicate user {user!r}", line_no)
        seen.add(user)
        if len(seq) < 3:
            raise DataFormatError(
                path, f"user {user!r} has {len(seq)} item(s); leave-one-out needs at least 3", line_no
            )
        if items is not None:
            for asin in seq:
                if asin not in items:
                    raise DataFormatError(path, f"user {user!r}: unknown item {asin!r}", line_no)
        sequences.append(UserSequence(user, seq))
    if not sequences:
        raise DataFormatError(path, "no user sequences")
    return sequences


def load_amazon(settings: AmazonSettings | None = None) -> AmazonDataset:
    """Read the items and the user sequences named by `settings` (default: vendored Beauty)."""
    settings = settings or AmazonSettings()
    items = read_items(settings.items_path)
    sequences = read_user_sequences(settings.sequences_path, items)
    dataset = AmazonDataset(items, sequences, Path(settings.items_path), Path(settings.sequences_path))
    logger.info(
        "read %d items and %d users (%d interactions) from %s",
        len(items), len(sequences), dataset.num_interactions, settings.sequences_path.parent,
    )
    return dataset


# ---------------------------------------------------------------------------------------------
# Item text and documents


def item_fields(item: AmazonItem, text: ItemTextSettings) -> dict[str, str | None]:
    """The values the text segments may use; None for a missing field."""
    brand = item.brand if item.brand not in text.unknown_brands else None
    first = item.categories[0] if item.categories else ()
    if not first and item.first_category_path:
        first = tuple(c for c in item.first_category_path.split(",") if c)
    return {
        "title": item.title,
        "brand": brand,
        "category": text.category_separator.join(first) or None,
        "categories": "; ".join(text.category_separator.join(p) for p in item.categories if p) or None,
        "first_category_path": item.first_category_path,
        "asin": item.asin,
        "p5_id": None if item.p5_id is None else str(item.p5_id),
    }


def item_text(item: AmazonItem, text: ItemTextSettings | None = None) -> str:
    """Render an item's text; segments whose fields are all missing are skipped."""
    text = text or ItemTextSettings()
    values = item_fields(item, text)
    kept = []
    for segment in text.segments:
        names = _FIELD_PATTERN.findall(segment)
        if names and all(values[n] is None for n in names):
            continue
        kept.append(segment.format(**{n: values[n] or "" for n in names}))
    return text.separator.join(kept)


def item_metadata(item: AmazonItem) -> dict[str, Any]:
    """Fields of an item other than its id, text and category label (JSON-ready)."""
    metadata: dict[str, Any] = {
        "p5_id": item.p5_id,
        "title": item.title,
        "brand": item.brand,
        "categories": [list(p) for p in item.categories],
    }
    metadata.update(item.extra)
    return metadata


def items_as_documents(dataset: AmazonDataset, text: ItemTextSettings | None = None) -> list[Document]:
    """The catalogue as corpus Documents: doc_id = asin, text = rendered item text,
    category = first_category_path, metadata = p5_id, title, brand, categories and other fields."""
    text = text or ItemTextSettings()
    return [
        Document(
            doc_id=item.asin,
            text=item_text(item, text),
            category=item.first_category_path,
            metadata=item_metadata(item),
        )
        for item in dataset.items.values()
    ]


def write_items_corpus(
    dataset: AmazonDataset, path: str | Path, text: ItemTextSettings | None = None
) -> int:
    """Write the catalogue as a corpus JSONL file (`doc_id`, `text`, `category`, the metadata
    fields at top level; gzip when `path` ends with `.gz`), the input of
    `lmindexer learn-ids --corpus`. Returns the number of documents."""
    documents = items_as_documents(dataset, text)
    write_corpus_jsonl(path, documents)
    logger.info("wrote %d documents to %s", len(documents), path)
    return len(documents)


# ---------------------------------------------------------------------------------------------
# Splits


def leave_one_out(dataset: AmazonDataset) -> RecSplits:
    """Leave-one-out splits per user (see the module docstring)."""
    train: list[RecExample] = []
    valid: list[RecExample] = []
    test: list[RecExample] = []
    train_sequences: dict[str, tuple[str, ...]] = {}
    for user in dataset.sequences:
        seq = user.items
        train_items = seq[:-2]
        train_sequences[user.user_id] = train_items
        valid.append(RecExample(user.user_id, tuple(seq[:-2]), seq[-2]))
        test.append(RecExample(user.user_id, tuple(seq[:-1]), seq[-1]))
        for t in range(1, len(train_items)):
            train.append(RecExample(user.user_id, tuple(train_items[:t]), train_items[t]))
    return RecSplits(train=train, valid=valid, test=test, train_sequences=train_sequences)
