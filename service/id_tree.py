"""The semantic-ID tree as a browsable structure: under a prefix, its child codes with their
document counts, category mix and sample titles (GET /ids/{prefix}).

This is the paper's per-code figure (LMIndexer, ICML 2024, Fig. 4: the categories of the documents
that share a code) made interactive: a good indexer puts documents of one category under one code.

Cost: ``IdTreeView`` is built once per index version (O(N): the trie's live IDs in lexicographic
order, plus each row's category and title, parsed once per bundle row and cached); a request then
costs O(t log N) to find the prefix's rows (binary search per level over the sorted IDs) plus
O(documents under the prefix) to count categories. No FastAPI here: ``service.web`` frames it.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from service.errors import BadRequestError, NotFoundError
from service.index import IndexSnapshot

# Titles longer than this are cut (with an ellipsis) in the tree view; the document view has the text.
MAX_TITLE_CHARS = 160
NO_CATEGORY = "(no category)"
# Answers kept per index version (the page asks for the same few prefixes again and again); a node of
# 256 children with 3 samples each is ~250 kB, so this bounds the cache near 10 MB in the worst case.
MAX_CACHED_NODES = 64
_CODE_RE = re.compile(r"[0-9]{1,9}")


class CategoryShare(BaseModel):
    """How many of a node's documents carry one category."""

    category: str = Field(description="The category path as the metadata gives it (levels joined by ','), "
                                      f"truncated to `category_depth` levels; {NO_CATEGORY!r} when absent.")
    num_documents: int = Field(ge=0)
    share: float = Field(ge=0.0, le=1.0, description="num_documents / the node's num_documents.")


class SampleDocument(BaseModel):
    """A document under a code, for a glance at what the code holds."""

    doc_id: str
    title: str = Field(description="metadata.title, or the start of the text when there is none.")
    semantic_id: list[int]


class IdChild(BaseModel):
    """One code that follows the prefix, and the documents under the extended prefix."""

    code: int = Field(ge=0)
    prefix: list[int] = Field(description="The parent's prefix followed by this code.")
    num_documents: int = Field(ge=1)
    categories: list[CategoryShare] = Field(description="The most frequent categories, largest first.")
    samples: list[SampleDocument] = Field(description="The first documents in semantic-ID order.")


class IdTreeNode(BaseModel):
    """GET /ids/{prefix}: a node of the semantic-ID tree and its children."""

    prefix: list[int] = Field(description="The node's codes, level 0 first; [] is the root.")
    level: int = Field(ge=0, description="The level of the children's codes (= len(prefix)).")
    level_kind: str = Field(description="'learned' (a code of the indexer) or 'counter' (the collision "
                                        "counter: each child is one document).")
    codebook_size: int = Field(description="Codes possible at this level (K, or the counter size).")
    num_levels: int = Field(description="Codes in a full semantic ID (learned levels + the counter).")
    num_documents: int = Field(ge=0, description="Documents whose semantic ID starts with the prefix.")
    num_children: int = Field(ge=0, description="Distinct codes used at this level under the prefix.")
    categories: list[CategoryShare] = Field(description="The node's category mix, largest first.")
    children: list[IdChild] = Field(description="Every used code, in code order.")
    index_version: int


@dataclass(frozen=True)
class _RowFacts:
    category: str  # full category path, NO_CATEGORY when absent
    title: str


def category_of(metadata: dict[str, Any]) -> str:
    """The category path of a document: ``metadata["category"]`` (a string, levels joined by ','),
    else the first path of ``metadata["categories"]`` (a list of lists, a list of strings, or a
    string), else ``NO_CATEGORY``."""
    category = metadata.get("category")
    if isinstance(category, str) and category.strip():
        return category.strip()
    categories = metadata.get("categories")
    if isinstance(categories, str) and categories.strip():
        return categories.strip()
    if isinstance(categories, list) and categories:
        first = categories[0]
        if isinstance(first, list):
            path = [str(c).strip() for c in first if str(c).strip()]
        else:
            path = [str(c).strip() for c in categories if not isinstance(c, list | dict) and str(c).strip()]
        if path:
            return ",".join(path)
    return NO_CATEGORY


def title_of(text: str, metadata: dict[str, Any]) -> str:
    """``metadata["title"]`` when it is a non-empty string, else the text; cut to MAX_TITLE_CHARS."""
    title = metadata.get("title")
    value = title.strip() if isinstance(title, str) and title.strip() else " ".join(text.split())
    return value if len(value) <= MAX_TITLE_CHARS else value[: MAX_TITLE_CHARS - 1] + "…"


def _truncate(category: str, depth: int | None) -> str:
    if depth is None or category == NO_CATEGORY:
        return category
    return ",".join(category.split(",")[:depth])


def _shares(categories: list[str], top: int) -> list[CategoryShare]:
    total = len(categories)
    return [CategoryShare(category=c, num_documents=n, share=n / total)
            for c, n in Counter(categories).most_common(top)] if total else []


class IdTreeView:
    """The live IDs of one index version in lexicographic order, with each row's category and title."""

    def __init__(self, snapshot: IndexSnapshot, bundle_facts: list[_RowFacts]) -> None:
        ids, rows = snapshot.trie.to_arrays()  # (N, L+1) int64 sorted lexicographically, (N,) int64
        self.version = snapshot.version
        self.ids = ids
        self.rows = rows
        self.codebook_sizes = tuple(int(s) for s in snapshot.trie.codebook_sizes)
        self._snapshot = snapshot
        self._bundle_facts = bundle_facts
        # Category of each position of the sorted IDs (N,), so a node counts a slice.
        added = snapshot.added_by_row
        self.categories = [category_of(added[r].metadata) if r in added else bundle_facts[r].category
                           for r in rows.tolist()]

    def facts(self, row: int) -> _RowFacts:
        """Category and title of a trie row (an added or changed document's own, else the bundle's)."""
        added = self._snapshot.added_by_row.get(row)
        if added is not None:
            return _RowFacts(category_of(added.metadata), title_of(added.text, added.metadata))
        return self._bundle_facts[row]

    def doc_id(self, row: int) -> str:
        added = self._snapshot.added_by_row.get(row)
        return added.doc_id if added is not None else self._snapshot.bundle.doc_ids[row]

    def span(self, prefix: tuple[int, ...]) -> tuple[int, int]:
        """[lo, hi) of the sorted IDs that start with ``prefix`` (binary search, one level at a time:
        within a span the next column is sorted)."""
        lo, hi = 0, len(self.ids)
        for level, code in enumerate(prefix):
            column = self.ids[lo:hi, level]
            lo, hi = (lo + int(np.searchsorted(column, code, "left")),
                      lo + int(np.searchsorted(column, code, "right")))
            if lo == hi:
                break
        return lo, hi

    def node(self, prefix: tuple[int, ...], *, samples: int, top_categories: int,
             category_depth: int | None) -> IdTreeNode:
        """The node at ``prefix`` (validated by the caller: 0 <= len < depth, codes in range)."""
        level = len(prefix)
        lo, hi = self.span(prefix)
        if lo == hi and level > 0:
            raise NotFoundError(f"no document has a semantic ID starting with {list(prefix)}")
        codes = self.ids[lo:hi, level]  # (n,) sorted
        child_codes, starts, counts = np.unique(codes, return_index=True, return_counts=True)
        all_categories: list[str] = []
        children = []
        truncated: dict[str, str] = {}  # distinct categories are few: truncate each once
        for code, start, count in zip(child_codes.tolist(), starts.tolist(), counts.tolist(), strict=True):
            first = lo + start
            categories = [truncated.get(c) or truncated.setdefault(c, _truncate(c, category_depth))
                          for c in self.categories[first:first + count]]
            all_categories.extend(categories)
            sample = [SampleDocument(doc_id=self.doc_id(r), title=self.facts(r).title,
                                     semantic_id=[int(c) for c in self.ids[first + i]])
                      for i, r in enumerate(self.rows[first:first + min(count, samples)].tolist())]
            children.append(IdChild(code=code, prefix=[*prefix, code], num_documents=count,
                                    categories=_shares(categories, top_categories), samples=sample))
        depth = len(self.codebook_sizes)
        return IdTreeNode(prefix=list(prefix), level=level,
                          level_kind="counter" if level == depth - 1 else "learned",
                          codebook_size=self.codebook_sizes[level], num_levels=depth,
                          num_documents=hi - lo, num_children=len(children),
                          categories=_shares(all_categories, top_categories), children=children,
                          index_version=self.version)


def parse_prefix(text: str, codebook_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """'12/407' -> (12, 407); '' -> (). 422 (naming ``prefix``) for a non-integer code, a code out of
    its level's range, or a prefix as long as a full ID (a full ID has no children: GET the document)."""
    stripped = text.strip("/")
    parts = stripped.split("/") if stripped else []
    codes = []
    for level, part in enumerate(parts):
        if not _CODE_RE.fullmatch(part):
            raise BadRequestError(f"prefix: code {part!r} at level {level} is not a non-negative integer",
                                  details=[{"loc": ["path", "prefix"], "msg": "codes are integers joined by '/'"}])
        codes.append(int(part))
    if len(codes) >= len(codebook_sizes):
        raise BadRequestError(f"prefix: {len(codes)} codes; a prefix has at most {len(codebook_sizes) - 1} "
                              "(a full semantic ID names one document)",
                              details=[{"loc": ["path", "prefix"], "msg": "prefix too long"}])
    for level, code in enumerate(codes):
        if code >= codebook_sizes[level]:
            raise BadRequestError(f"prefix: code {code} at level {level} is out of range "
                                  f"(0..{codebook_sizes[level] - 1})",
                                  details=[{"loc": ["path", "prefix"], "msg": "code out of range"}])
    return tuple(codes)


class IdTree:
    """Builds and caches one ``IdTreeView`` per index version (thread-safe; callers run it in a thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view: IdTreeView | None = None
        self._nodes: dict[tuple[Any, ...], IdTreeNode] = {}  # answers of the current version (LRU-less: capped)
        self._bundle_facts: list[_RowFacts] | None = None
        self._bundle_key: int | None = None

    def _facts_of_bundle(self, snapshot: IndexSnapshot) -> list[_RowFacts]:
        bundle = snapshot.bundle
        if self._bundle_facts is None or self._bundle_key != id(bundle):
            facts = []
            for text, metadata_json in zip(bundle.texts, bundle.metadata_json, strict=True):
                metadata = json.loads(metadata_json)
                facts.append(_RowFacts(category_of(metadata), title_of(text, metadata)))
            self._bundle_facts, self._bundle_key = facts, id(bundle)
        return self._bundle_facts

    def view(self, snapshot: IndexSnapshot) -> IdTreeView:
        """The view of ``snapshot``'s version (built on the first request after an index update)."""
        with self._lock:
            if self._view is None or self._view.version != snapshot.version:
                self._view = IdTreeView(snapshot, self._facts_of_bundle(snapshot))
                self._nodes = {}
            return self._view

    def node(self, snapshot: IndexSnapshot, prefix_text: str, *, samples: int = 3, top_categories: int = 5,
             category_depth: int | None = None) -> IdTreeNode:
        """GET /ids/{prefix}: see ``IdTreeNode``. Errors: 422 for a malformed prefix, 404 when no
        document has it."""
        view = self.view(snapshot)
        prefix = parse_prefix(prefix_text, view.codebook_sizes)
        key = (view.version, prefix, samples, top_categories, category_depth)
        node = self._nodes.get(key)
        if node is None:
            node = view.node(prefix, samples=samples, top_categories=top_categories, category_depth=category_depth)
            with self._lock:
                if len(self._nodes) >= MAX_CACHED_NODES:
                    self._nodes.clear()
                if self._view is view:  # not for a version replaced meanwhile
                    self._nodes[key] = node
        return node


__all__ = ["NO_CATEGORY", "CategoryShare", "IdChild", "IdTree", "IdTreeNode", "IdTreeView", "SampleDocument",
           "category_of", "parse_prefix", "title_of"]
