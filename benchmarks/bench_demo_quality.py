"""Search quality of a served bundle, measured through HTTP only (issue 18).

Three figures, each for every /search mode the service offers (the default, i.e. no `mode` field, plus
each value of the optional `mode` field when GET /openapi.json shows one; one row per mode; a mode the
service answers with a 4xx is recorded under `search_modes.refused` and not run):

1. **Category precision@10** over the committed query set (benchmarks/data/demo_queries.tsv, written
   before any result was seen): per query, the share of the top 10 whose document has a category path
   that ENDS WITH one of the query's accepted suffixes (components compared whole, after stripping
   spaces, case-sensitive); a query answered with fewer than 10 results counts the missing ones as not
   relevant. A result's category paths are its served `metadata.categories` (list of paths, as the demo's
   documents carry them); a document served without them is looked up by doc_id in the items file
   (`--items`); the JSON counts which source each result's paths came from. Reported: the mean over the
   queries, each query's precision and the number of queries. Target >= 0.7.
2. **Title hit@10**: a seeded sample (`--seed`, default 18) of 200 items of the items file that the
   service holds (a seeded permutation of the items with a title, checked in order with
   GET /documents/{doc_id} until 200 are found), each searched by its exact title (the items file's,
   stripped); a hit when its doc_id is in the top 10. Target >= 0.9.
3. **New documents hit@10**: documents indexed through POST /index-documents, each searched by its exact
   title (`metadata.title`); the share whose doc_id is in the top 10. Target >= 0.9. Source: `--new-documents
   FILE` (JSONL of /index-documents documents, e.g. the items a demo build left out of its bundle), else
   200 seeded items the service holds (seed + 1), indexed under new doc_ids `new-<doc_id>` with the text
   and metadata of the service's own copy: their twins stay in the index, so this measures that a new
   document is reachable by its title, not cold start on unseen items (the JSON says which source).

Server: `--bundle DIR` starts the service itself (`python -m service`, the code of `lmindexer serve`) on a
free loopback port with a throw-away document store in a temporary directory, Redis off and its own API
key, waits for /readyz and stops it at the end. `--url URL` measures a running service; indexing then
writes into that service's store, so the new-documents part runs only with `--allow-writes` (and the
service's key in `--api-key` or LMINDEXER_API_KEY when it has one).

    python benchmarks/bench_demo_quality.py --bundle bundles/demo
    python benchmarks/bench_demo_quality.py --url http://127.0.0.1:8000 [--allow-writes]

Writes benchmarks/results/demo_quality.json (`--out`) with the machine's description and load, a per-query
bar chart next to it (same name, .png) when matplotlib is installed, and prints a table. Exits 0 whether or
not the targets are met (`targets` and `met` are in the JSON), 1 when requests failed, 2 on bad options.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import logging
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_service import machine_description  # noqa: E402
from tests.service.processes import ServiceProcess  # noqa: E402

logger = logging.getLogger("bench_demo_quality")

QUERIES_FILE = REPO / "benchmarks" / "data" / "demo_queries.tsv"
ITEMS_FILE = REPO / "data" / "amazon-beauty" / "items.jsonl.gz"
OUT_FILE = REPO / "benchmarks" / "results" / "demo_quality.json"
SEED = 18  # issue 18: the title sample's seed (the twins of the new-documents part use SEED + 1)
K = 10
SAMPLE_SIZE = 200
TARGETS = {"category_precision_at_10": 0.7, "title_hit_at_10": 0.9, "new_documents_hit_at_10": 0.9}
# The values of /search's `mode` (the retrieval issue) when the OpenAPI schema names the field but no enum.
DOCUMENTED_SEARCH_MODES = ("generative", "hybrid")
NEW_PREFIX = "new-"
INDEX_BATCH = 50


class BenchmarkError(RuntimeError):
    """A request failed or an input file is malformed: the run's figures cannot be trusted."""


# ---------------------------------------------------------------------------------------------
# The query set and the relevance rule


@dataclass(frozen=True)
class Query:
    """One line of the query file: the query and its accepted category path suffixes."""

    text: str
    suffixes: tuple[tuple[str, ...], ...]
    line: int


def parse_suffix(text: str) -> tuple[str, ...]:
    """``"Face > Cleansers"`` -> ``("Face", "Cleansers")`` (components stripped; an empty one is an error)."""
    components = tuple(c.strip() for c in text.split(">"))
    if not all(components):
        raise ValueError(f"empty component in category suffix {text!r}")
    return components


def read_queries(path: Path) -> list[Query]:
    """The query file: `query TAB suffix | suffix ...`; blank lines and lines starting with # are skipped."""
    queries = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = raw.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise BenchmarkError(f"{path}:{number}: expected `query<TAB>suffix | suffix ...`, got {raw!r}")
        try:
            suffixes = tuple(parse_suffix(s) for s in parts[1].split("|"))
        except ValueError as exc:
            raise BenchmarkError(f"{path}:{number}: {exc}") from exc
        queries.append(Query(parts[0].strip(), suffixes, number))
    if not queries:
        raise BenchmarkError(f"{path}: no queries")
    return queries


def ends_with(path: Sequence[str], suffix: Sequence[str]) -> bool:
    """Whether the category path ends with the suffix, components compared whole after stripping spaces."""
    if len(suffix) > len(path):
        return False
    tail = path[len(path) - len(suffix):]
    return all(a.strip() == b.strip() for a, b in zip(tail, suffix, strict=True))


def is_relevant(paths: Iterable[Sequence[str]], suffixes: Iterable[Sequence[str]]) -> bool:
    """Whether one of the category paths ends with one of the suffixes."""
    suffixes = list(suffixes)
    return any(ends_with(path, suffix) for path in paths for suffix in suffixes)


def category_paths(value: Any) -> list[tuple[str, ...]] | None:
    """A `categories` value (a list of paths, each a list of strings) as tuples; None when it is not one."""
    if not isinstance(value, list) or not all(isinstance(p, list) and all(isinstance(c, str) for c in p)
                                              for p in value):
        return None
    return [tuple(p) for p in value]


# ---------------------------------------------------------------------------------------------
# The items file


@dataclass(frozen=True)
class Item:
    """What the benchmark reads of an items-file line."""

    doc_id: str
    title: str | None
    categories: list[tuple[str, ...]]


def read_items(path: Path) -> dict[str, Item]:
    """asin -> Item, in file order (JSON lines, gzip when the name ends in .gz; the P5 items format)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    items: dict[str, Item] = {}
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                doc_id = str(record["asin"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise BenchmarkError(f"{path}:{number}: not an items line with an `asin` ({exc})") from exc
            title = record.get("title")
            title = title.strip() if isinstance(title, str) and title.strip() else None
            paths = category_paths(record.get("categories") or [])
            if paths is None:
                raise BenchmarkError(f"{path}:{number}: `categories` must be a list of lists of strings")
            items[doc_id] = Item(doc_id, title, paths)
    if not items:
        raise BenchmarkError(f"{path}: no items")
    return items


# ---------------------------------------------------------------------------------------------
# The service, through HTTP


class ServiceClient:
    """The endpoints the benchmark uses, on one keep-alive pool shared by its threads."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers,
                                 limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; 429 and 503 (overload, Redis) are retried after Retry-After, a few times."""
        for attempt in range(5):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise BenchmarkError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if response.status_code not in (429, 503) or attempt == 4:
                return response
            time.sleep(min(5.0, float(response.headers.get("retry-after") or 0.5)))
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        response = self._request("GET", path)
        if response.status_code != 200:
            raise BenchmarkError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def search_response(self, query: str, k: int, mode: str | None) -> httpx.Response:
        """POST /search as answered (mode None: no `mode` field, the service's default)."""
        body: dict[str, Any] = {"query": query, "k": k}
        if mode is not None:
            body["mode"] = mode
        return self._request("POST", "/search", json=body)

    def search(self, query: str, k: int, mode: str | None) -> list[dict[str, Any]]:
        """The hits of POST /search (mode None: no `mode` field, the service's default)."""
        response = self.search_response(query, k, mode)
        if response.status_code != 200:
            body = {"query": query, "k": k, **({"mode": mode} if mode is not None else {})}
            raise BenchmarkError(f"POST /search {body!r}: {response.status_code} {response.text[:300]}")
        return list(response.json()["results"])

    def document(self, doc_id: str) -> dict[str, Any] | None:
        """GET /documents/{doc_id}: the document, or None when the service does not hold it (404)."""
        path = "/documents/" + urllib.parse.quote(doc_id, safe="")
        response = self._request("GET", path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise BenchmarkError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return dict(response.json())

    def index_documents(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST /index-documents (one batch); the per-document outcomes."""
        response = self._request("POST", "/index-documents", json={"documents": documents})
        if response.status_code != 200:
            raise BenchmarkError(f"POST /index-documents ({len(documents)} documents): {response.status_code} "
                                 f"{response.text[:300]}")
        return list(response.json()["documents"])


def parallel_map(function: Callable[[Any], Any], values: Sequence[Any], workers: int) -> list[Any]:
    """function over values on a few threads, results in order (the first exception is raised)."""
    if workers <= 1 or len(values) <= 1:
        return [function(v) for v in values]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, values))


def _resolve(schema: Any, openapi: dict[str, Any]) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        schema = openapi.get("components", {}).get("schemas", {}).get(name, {})
    return schema


def _enum_values(schema: Any, openapi: dict[str, Any]) -> list[str]:
    """Every string enum/const value inside a property's schema (through $ref, anyOf, oneOf, allOf)."""
    schema = _resolve(schema, openapi)
    if not isinstance(schema, dict):
        return []
    values = [v for v in schema.get("enum", []) if isinstance(v, str)]
    if isinstance(schema.get("const"), str):
        values.append(schema["const"])
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            values.extend(v for v in _enum_values(sub, openapi) if v not in values)
    return values


def search_modes(openapi: dict[str, Any]) -> dict[str, Any]:
    """The /search modes the OpenAPI document offers: {"mode_field": bool, "modes": [...], "source": ...}.

    The modes are the `mode` property's enum values when the schema lists them, else the documented ones
    (DOCUMENTED_SEARCH_MODES); no `mode` property: none (only the default runs)."""
    operation = openapi.get("paths", {}).get("/search", {}).get("post", {})
    body = _resolve(operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}),
                    openapi)
    properties = body.get("properties", {}) if isinstance(body, dict) else {}
    if "mode" not in properties:
        return {"mode_field": False, "modes": [], "source": "GET /openapi.json: /search has no `mode` field"}
    values = _enum_values(properties["mode"], openapi)
    if values:
        return {"mode_field": True, "modes": values, "source": "GET /openapi.json: the `mode` field's enum"}
    return {"mode_field": True, "modes": list(DOCUMENTED_SEARCH_MODES),
            "source": "GET /openapi.json names a `mode` field without an enum: the documented values"}


# ---------------------------------------------------------------------------------------------
# The three figures


class CategoryLookup:
    """A result's category paths: its served `metadata.categories`, else the items file's by doc_id."""

    def __init__(self, items: dict[str, Item] | None) -> None:
        self.items = items or {}
        self.sources: Counter[str] = Counter()

    def __call__(self, hit: dict[str, Any]) -> list[tuple[str, ...]]:
        metadata = (hit.get("document") or {}).get("metadata") or {}
        paths = category_paths(metadata.get("categories"))
        if paths is not None:
            self.sources["served_metadata"] += 1
            return paths
        item = self.items.get(str(hit["doc_id"]))
        if item is not None:
            self.sources["items_file"] += 1
            return item.categories
        self.sources["none"] += 1  # neither: never relevant
        return []


def category_precision(client: ServiceClient, queries: Sequence[Query], mode: str | None, lookup: CategoryLookup,
                       *, workers: int = 4) -> dict[str, Any]:
    """Precision@10 of each query (relevant results among the top 10, divided by 10) and their mean."""
    def one(query: Query) -> dict[str, Any]:
        hits = client.search(query.text, K, mode)[:K]
        relevant = [is_relevant(lookup(hit), query.suffixes) for hit in hits]
        return {"query": query.text, "line": query.line, "precision": round(sum(relevant) / K, 4),
                "relevant": sum(relevant), "returned": len(hits),
                "top": [str(hit["doc_id"]) for hit in hits],
                "relevant_ranks": [i + 1 for i, r in enumerate(relevant) if r]}

    per_query = parallel_map(one, list(queries), workers)
    mean = sum(q["precision"] for q in per_query) / len(per_query)
    return {"mean": round(mean, 4), "num_queries": len(per_query), "per_query": per_query}


def title_hits(client: ServiceClient, targets: Sequence[tuple[str, str]], mode: str | None, *,
               workers: int = 4) -> dict[str, Any]:
    """Each (doc_id, title) searched by its title: hit@10 (doc_id in the top 10), hit@1, the misses."""
    def rank(target: tuple[str, str]) -> int | None:
        doc_ids = [str(hit["doc_id"]) for hit in client.search(target[1], K, mode)[:K]]
        return doc_ids.index(target[0]) + 1 if target[0] in doc_ids else None

    ranks = parallel_map(rank, list(targets), workers)
    found = [r for r in ranks if r is not None]
    n = len(targets)
    return {"hit_at_10": round(len(found) / n, 4) if n else None,
            "hit_at_1": round(sum(r == 1 for r in found) / n, 4) if n else None,
            "num_items": n, "hits": len(found),
            "misses": [{"doc_id": d, "title": t} for (d, t), r in zip(targets, ranks, strict=True) if r is None]}


def served_sample(client: ServiceClient, items: dict[str, Item], size: int, seed: int, *,
                  workers: int = 4) -> tuple[list[tuple[Item, dict[str, Any]]], dict[str, Any]]:
    """`size` items with a title that the service holds: a seeded permutation of the items file's titled items,
    checked in that order with GET /documents/{doc_id}; returns (item, served document) pairs and how many
    were checked."""
    order = [item for item in items.values() if item.title]
    random.Random(seed).shuffle(order)
    chosen: list[tuple[Item, dict[str, Any]]] = []
    checked = 0
    chunk = max(32, workers * 8)
    while len(chosen) < size and checked < len(order):
        batch = order[checked:checked + chunk]
        documents = parallel_map(lambda item: client.document(item.doc_id), batch, workers)
        checked += len(batch)
        for item, document in zip(batch, documents, strict=True):
            if document is not None and len(chosen) < size:
                chosen.append((item, document))
    stats = {"seed": seed, "size": len(chosen), "wanted": size, "items_with_title": len(order),
             "items_without_title": len(items) - len(order), "checked": checked,
             "rule": "a seeded permutation (random.Random(seed).shuffle, file order first) of the items file's "
                     "items with a title, checked in order with GET /documents/{doc_id}; the first `size` the "
                     "service holds"}
    if len(chosen) < size:
        stats["warning"] = (f"only {len(chosen)} of the items file's titled items are served (wanted {size}): "
                            "is --items the catalogue of this bundle?")
        logger.warning("%s", stats["warning"])
    return chosen, stats


def read_new_documents(path: Path) -> list[dict[str, Any]]:
    """A JSONL file of /index-documents documents ({"doc_id", "text", "metadata"} per line)."""
    documents = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("doc_id"), str) or not isinstance(
                record.get("text"), str) or not isinstance(record.get("metadata", {}), dict):
            raise BenchmarkError(f"{path}:{number}: expected {{\"doc_id\": str, \"text\": str, \"metadata\": {{...}}}}")
        documents.append({"doc_id": record["doc_id"], "text": record["text"], "metadata": record.get("metadata", {})})
    if not documents:
        raise BenchmarkError(f"{path}: no documents")
    return documents


def twin_documents(sample: Sequence[tuple[Item, dict[str, Any]]]) -> list[dict[str, Any]]:
    """New documents `new-<doc_id>` with the text and metadata of the service's copy of each sampled item."""
    return [{"doc_id": NEW_PREFIX + item.doc_id, "text": served["text"], "metadata": served.get("metadata") or {}}
            for item, served in sample]


def index_all(client: ServiceClient, documents: Sequence[dict[str, Any]], batch: int = INDEX_BATCH) -> dict[str, Any]:
    """Index the documents in batches (sequential); the count of each status and the time taken."""
    statuses: Counter[str] = Counter()
    started = time.perf_counter()
    for start in range(0, len(documents), batch):
        for outcome in client.index_documents(list(documents[start:start + batch])):
            statuses[str(outcome["status"])] += 1
    return {"documents": len(documents), "statuses": dict(sorted(statuses.items())),
            "seconds": round(time.perf_counter() - started, 2)}


def document_title(document: dict[str, Any]) -> str | None:
    title = (document.get("metadata") or {}).get("title")
    return title.strip() if isinstance(title, str) and title.strip() else None


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    """What a run needs besides the service (argparse fills it; tests build it directly)."""

    queries: Path = QUERIES_FILE
    items: Path = ITEMS_FILE
    new_documents: Path | None = None
    allow_writes: bool = True  # False: skip the new-documents part (a --url service without --allow-writes)
    writes_refused_reason: str = ""
    seed: int = SEED
    sample_size: int = SAMPLE_SIZE
    concurrency: int = 4


def mode_label(mode: str | None) -> str:
    return "default" if mode is None else mode


def with_targets(rows: list[dict[str, Any]], key: str, target: float) -> dict[str, Any]:
    for row in rows:
        row["met"] = row[key] is not None and row[key] >= target
    return {"target": target, "met": {row["mode"]: row["met"] for row in rows}, "rows": rows}


def measure(client: ServiceClient, options: Options) -> dict[str, Any]:
    """The three figures for every /search mode; the report's body (without the machine description)."""
    info = client.get_json("/info")
    modes_found = search_modes(client.get_json("/openapi.json"))
    items = read_items(options.items)
    queries = read_queries(options.queries)
    modes: list[str | None] = [None]
    refused: dict[str, str] = {}
    for mode in modes_found["modes"]:  # offered by the schema; this bundle may still refuse one (e.g. 422)
        response = client.search_response(queries[0].text, K, mode)
        if response.status_code == 200:
            modes.append(mode)
        elif 400 <= response.status_code < 500:
            refused[mode] = f"{response.status_code} {response.text[:300]}"
            logger.warning("/search mode %r refused by the service: %s", mode, refused[mode])
        else:
            raise BenchmarkError(f"POST /search mode {mode!r}: {response.status_code} {response.text[:300]}")
    modes_found["refused"] = refused
    workers = options.concurrency
    report: dict[str, Any] = {
        "service": {"url": client.url, "num_documents": info.get("num_documents"),
                    "index_version_at_start": info.get("index_version"),
                    "semantic_ids": (info.get("manifest") or {}).get("semantic_ids"),
                    "bundle_created_at": (info.get("manifest") or {}).get("created_at"),
                    "indexer_precision": info.get("indexer_precision"),
                    "execution_providers": info.get("execution_providers")},
        "search_modes": {**modes_found, "rows": [mode_label(m) for m in modes]},
        "targets": dict(TARGETS),
    }

    # 1. category precision@10
    lookup = CategoryLookup(items)
    rows = []
    for mode in modes:
        rows.append({"mode": mode_label(mode), **category_precision(client, queries, mode, lookup, workers=workers)})
    report["category_precision_at_10"] = {
        "queries_file": _shown(options.queries), "num_queries": len(queries), "k": K,
        "rule": "relevant when one of the result's category paths ends with one of the query's suffixes "
                "(components compared whole after stripping spaces, case-sensitive); precision = relevant "
                "results in the top k / k",
        "category_source": {
            "items_file": _shown(options.items),
            "results_by_source": dict(sorted(lookup.sources.items())),
            "note": "a result's paths are its served metadata.categories; only results served without them "
                    "are looked up by doc_id in the items file ('none': in neither, never relevant)"},
        **with_targets(rows, "mean", TARGETS["category_precision_at_10"])}
    logger.info("category precision@10: %s", {r["mode"]: r["mean"] for r in rows})

    # 2. title hit@10
    sample, sample_stats = served_sample(client, items, options.sample_size, options.seed, workers=workers)
    targets = [(item.doc_id, str(item.title)) for item, _ in sample]
    rows = [{"mode": mode_label(m), **title_hits(client, targets, m, workers=workers)} for m in modes]
    report["title_hit_at_10"] = {
        "items_file": _shown(options.items), "sample": sample_stats,
        "query": "the item's title in the items file, stripped, searched as written",
        **with_targets(rows, "hit_at_10", TARGETS["title_hit_at_10"])}
    logger.info("title hit@10: %s", {r["mode"]: r["hit_at_10"] for r in rows})

    # 3. new documents
    report["new_documents"] = new_documents_part(client, options, items, modes)
    return report


def new_documents_part(client: ServiceClient, options: Options, items: dict[str, Item],
                       modes: list[str | None]) -> dict[str, Any]:
    """Index new documents through POST /index-documents and search each by its title."""
    if not options.allow_writes:
        return {"skipped": options.writes_refused_reason, "target": TARGETS["new_documents_hit_at_10"]}
    if options.new_documents is not None:
        documents = read_new_documents(options.new_documents)
        already = sum(d is not None for d in parallel_map(lambda d: client.document(d["doc_id"]), documents,
                                                           options.concurrency))
        source: dict[str, Any] = {
            "kind": "file", "file": _shown(options.new_documents),
            "served_before_indexing": already,
            "note": "documents of the file (e.g. items a demo build left out of its bundle) indexed as given; "
                    "`served_before_indexing` counts those the service already held (0 for a true hold-out)"}
    else:
        sample, stats = served_sample(client, items, options.sample_size, options.seed + 1,
                                      workers=options.concurrency)
        documents = twin_documents(sample)
        source = {
            "kind": "twins", "items_file": _shown(options.items), "sample": stats, "doc_id_prefix": NEW_PREFIX,
            "note": "each new document is a copy (the service's text and metadata) of an item the service already "
                    "holds, indexed under doc_id 'new-<doc_id>': its twin is in the bundle and also matches the "
                    "title, so this measures that an indexed document is found by its title, not cold start on "
                    "unseen items (give --new-documents with a hold-out file for that)"}
    titled = [(d["doc_id"], title) for d in documents if (title := document_title(d))]
    indexing = index_all(client, documents)
    logger.info("indexed %d new documents: %s", len(documents), indexing["statuses"])
    rows = [{"mode": mode_label(m), **title_hits(client, titled, m, workers=options.concurrency)} for m in modes]
    return {"source": source, "indexing": indexing, "without_title": len(documents) - len(titled),
            "query": "the document's metadata.title, stripped, searched as written",
            **with_targets(rows, "hit_at_10", TARGETS["new_documents_hit_at_10"])}


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, float | None, float, bool]]:
    """(figure, mode, value, target, met) for the table."""
    rows = []
    for figure, key, name in (("category_precision_at_10", "mean", "category precision@10"),
                              ("title_hit_at_10", "hit_at_10", "title hit@10"),
                              ("new_documents", "hit_at_10", "new documents hit@10")):
        part = report.get(figure) or {}
        for row in part.get("rows", []):
            rows.append((name, row["mode"], row[key], part["target"], row["met"]))
    return rows


def print_table(report: dict[str, Any]) -> None:
    print(f"{'figure':<24} {'mode':<12} {'value':>7} {'target':>7}  met")
    for name, mode, value, target, met in summary_rows(report):
        shown = "-" if value is None else f"{value:.3f}"
        print(f"{name:<24} {mode:<12} {shown:>7} {target:>7.2f}  {'yes' if met else 'NO'}")
    skipped = (report.get("new_documents") or {}).get("skipped")
    if skipped:
        print(f"new documents: skipped ({skipped})")


def write_plot(report: dict[str, Any], path: Path) -> str | None:
    """A horizontal bar chart of each query's precision@10 per mode; None (and no file) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = report["category_precision_at_10"]["rows"]
    queries = [q["query"] for q in rows[0]["per_query"]]
    figure = Figure(figsize=(8, 1.5 + 0.2 * len(queries) * max(1, len(rows)) ** 0.5))
    axes = figure.add_subplot()
    height = 0.8 / len(rows)
    for i, row in enumerate(rows):
        positions = [q + i * height for q in range(len(queries))]
        axes.barh(positions, [q["precision"] for q in row["per_query"]], height=height,
                  label=f"{row['mode']} (mean {row['mean']:.2f})")
    axes.set_yticks([q + 0.4 - height / 2 for q in range(len(queries))], queries, fontsize=7)
    axes.invert_yaxis()
    axes.axvline(report["category_precision_at_10"]["target"], color="black", linestyle="--", linewidth=1,
                 label="target")
    axes.set_xlim(0, 1)
    axes.margins(y=0.01)
    axes.set_xlabel("category precision@10")
    axes.set_title(f"Category precision@10 per query ({len(queries)} queries)", fontsize=9)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return _shown(path)


def start_service(bundle: Path, workdir: Path, intra_op_threads: int) -> tuple[ServiceProcess, str]:
    """The service on `bundle`: free port, throw-away store in `workdir`, Redis off, a fresh API key."""
    api_key = secrets.token_urlsafe(16)
    env = {"LMINDEXER_API_KEY": api_key, "LMINDEXER_LOG_LEVEL": "WARNING",
           "LMINDEXER_INTRA_OP_THREADS": str(intra_op_threads)}
    # ServiceProcess passes no LMINDEXER_* variable of ours through, so no LMINDEXER_REDIS_URL: Redis is off.
    service = ServiceProcess(bundle, workdir / "store.sqlite3", env=env, log_path=workdir / "service.log")
    try:
        service.start(timeout_s=600)
    except RuntimeError as exc:  # it exited or never became ready; the message carries its log's tail
        raise BenchmarkError(f"the service on {bundle} did not start: {exc}") from exc
    return service, api_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server = parser.add_mutually_exclusive_group(required=True)
    server.add_argument("--bundle", type=Path, help="Start the service on this bundle (e.g. bundles/demo).")
    server.add_argument("--url", help="Measure the service running at this URL (e.g. http://127.0.0.1:8000).")
    parser.add_argument("--allow-writes", action="store_true",
                        help="With --url: index the new documents into that service's store (else that part is "
                             "skipped).")
    parser.add_argument("--api-key", default=os.environ.get("LMINDEXER_API_KEY"),
                        help="With --url: the service's API key for /index-documents (default: $LMINDEXER_API_KEY).")
    parser.add_argument("--queries", type=Path, default=QUERIES_FILE, help="The query file (query TAB suffixes).")
    parser.add_argument("--items", type=Path, default=ITEMS_FILE,
                        help="Items file (P5 JSONL, .gz allowed): the title sample, categories by doc_id.")
    parser.add_argument("--new-documents", type=Path, metavar="FILE",
                        help="JSONL of /index-documents documents to index and search by title (e.g. the demo "
                             "build's hold-out file); default: twins of seeded served items.")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--sample-size", type=int, default=SAMPLE_SIZE)
    parser.add_argument("--concurrency", type=int, default=4, help="Client threads.")
    parser.add_argument("--intra-op-threads", type=int, default=0, help="With --bundle: the service's setting.")
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.bundle is not None and not (args.bundle / "manifest.json").is_file():
        parser.error(f"--bundle {args.bundle}: no manifest.json (build one: lmindexer build-demo --out DIR)")
    for name in ("queries", "items", "new_documents"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name.replace('_', '-')} {path}: no such file")
    if args.sample_size < 1 or args.concurrency < 1:
        parser.error("--sample-size and --concurrency must be >= 1")

    options = Options(queries=args.queries, items=args.items, new_documents=args.new_documents, seed=args.seed,
                      sample_size=args.sample_size, concurrency=args.concurrency)
    report: dict[str, Any] = {
        "benchmark": "demo_quality", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([sys.executable, *sys.argv]), "machine": machine_description(),
        "settings": {"k": K, "seed": args.seed, "sample_size": args.sample_size, "concurrency": args.concurrency,
                     "queries": _shown(args.queries), "items": _shown(args.items),
                     "new_documents": None if args.new_documents is None else _shown(args.new_documents)},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-demo-quality-"))
    service: ServiceProcess | None = None
    status = 0
    try:
        if args.bundle is not None:
            service, api_key = start_service(args.bundle, workdir, args.intra_op_threads)
            url = service.url
            report["server"] = {"started_by_benchmark": True, "bundle": _shown(args.bundle),
                                "store": "a throw-away SQLite store in a temporary directory (deleted at the end)",
                                "redis": "off", "api_key": "a fresh random key"}
        else:
            url, api_key = args.url, args.api_key
            report["server"] = {"started_by_benchmark": False, "url": url,
                                "store": "the running service's own (written only with --allow-writes)"}
            if not args.allow_writes:
                options.allow_writes = False
                options.writes_refused_reason = ("--url without --allow-writes: indexing would write into that "
                                                 "service's store")
        client = ServiceClient(url, api_key)
        try:
            report.update(measure(client, options))
        finally:
            client.close()
    except BenchmarkError as exc:
        logger.error("%s", exc)
        report["error"] = str(exc)
        status = 1
    finally:
        if service is not None:
            if status:
                logger.error("service log:\n%s", service.log_tail())
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        report["load_average_after"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if "category_precision_at_10" in report:
            report["plot"] = write_plot(report, args.out.with_suffix(".png"))
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        logger.info("wrote %s", args.out)
    print_table(report)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
