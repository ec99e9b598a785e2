"""Data readers: JSONL corpora, SMART collections (Cranfield, CISI ... by folder), queries, qrels and runs (TREC).

Every reader raises `training.errors.DataFormatError` naming the file and the line for
malformed input, and reads gzip files transparently. The Amazon P5 reader lives in
`training.data.amazon`.
"""

from training.data.corpus import Document, read_corpus_jsonl, write_corpus_jsonl
from training.data.smart import (
    CRANFIELD_SPLIT_SEED,
    SmartCollection,
    collection_query_split,
    cranfield_query_split,
    read_cranfield,
    read_smart_collection,
    read_smart_documents,
    read_smart_qrels,
    read_smart_queries,
    smart_query_split,
)
from training.data.trec import (
    Qrels,
    Query,
    Run,
    rank_documents,
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_queries_tsv,
    write_run,
)

__all__ = [
    "CRANFIELD_SPLIT_SEED",
    "Document",
    "Qrels",
    "Query",
    "Run",
    "SmartCollection",
    "collection_query_split",
    "cranfield_query_split",
    "rank_documents",
    "read_corpus_jsonl",
    "read_cranfield",
    "read_qrels",
    "read_queries",
    "read_run",
    "read_smart_collection",
    "read_smart_documents",
    "read_smart_qrels",
    "read_smart_queries",
    "smart_query_split",
    "write_corpus_jsonl",
    "write_qrels",
    "write_queries_tsv",
    "write_run",
]
