"""Runtime configuration of the service: LMINDEXER_* environment variables, read only here.

Every field has a default except the bundle directory, so `lmindexer serve --bundle DIR` runs with
no other server. Unknown keyword arguments are rejected (``extra="forbid"``); unknown
``LMINDEXER_*`` environment variables cannot be rejected outright (other commands of the project
share the prefix), so ``unknown_environment_keys`` lists them and the service logs a warning at
start: a typo such as ``LMINDEXER_REDIS_ULR`` must not pass silently.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LMINDEXER_"
# Read by other commands of the project, not by the service settings: the log level (lmindexer/cli.py) and
# training's embedding/encoder-state cache (training/indexing/embedding_cache.py; `make run` builds and then
# serves in one environment, so a user who sets it for the build should not be told it is a typo).
_SHARED_ENV_KEYS = frozenset({"LMINDEXER_LOG_LEVEL", "LMINDEXER_CACHE_DIR"})


class ExecutionProvider(StrEnum):
    """Which onnxruntime execution provider runs the models."""

    AUTO = "auto"  # CUDA when onnxruntime-gpu sees a GPU, else CPU
    CPU = "cpu"
    CUDA = "cuda"


# Which encoder graph the indexer (POST /index-documents) runs; see ServiceSettings.indexer_precision.
IndexerPrecision = Literal["auto", "fp32", "int8"]


class SyncMode(StrEnum):
    """SQLite `synchronous` pragma for the document store (WAL mode)."""

    FULL = "FULL"
    NORMAL = "NORMAL"


class ServiceSettings(BaseSettings):
    """Runtime configuration, read from LMINDEXER_* environment variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    bundle_dir: Path = Field(
        description="The exported bundle (manifest.json, ONNX graphs, trie.bin, documents.jsonl). "
                    "`lmindexer serve --bundle DIR` sets it.")
    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    store_path: Path | None = Field(
        None,
        description="SQLite file holding the documents added through /index-documents and the last "
                    "applied update. Default: var/store-<bundle fingerprint>.sqlite3 under the working "
                    "directory. Put it on a persistent volume in production; one file per replica.")
    store_synchronous: SyncMode = Field(
        SyncMode.FULL,
        description="SQLite synchronous pragma. FULL fsyncs the WAL at every commit, so an acknowledged "
                    "write survives a power loss too; NORMAL survives kill -9 (the OS keeps the WAL) but "
                    "may lose the last commits on a power loss. Change only for a faster, weaker store.")
    redis_url: str | None = Field(
        None,
        description="Redis for the result/document cache and the stream of index updates shared by "
                    "replicas (e.g. redis://redis:6379/0). Unset: no cache, single-replica indexing.")
    redis_timeout_s: float = Field(
        0.25, gt=0,
        description="Socket connect/read timeout of every Redis call. Short, so a stuck Redis slows a "
                    "request by at most this much; raise it only for a remote Redis with high latency.")
    redis_retry_interval_s: float = Field(
        0.5, gt=0,
        description="After a Redis failure, skip Redis for this long before trying again (so an outage "
                    "does not add a timeout to every request). This bounds how soon the service notices "
                    "that Redis is back.")
    cache_ttl_s: int = Field(
        300, ge=0,
        description="TTL of cached results and document lookups. Entries are keyed by index version, so "
                    "the TTL only bounds memory, never staleness. 0 disables caching.")
    stream_key_prefix: str = Field(
        "lmindexer:v1:updates",
        description="Redis stream of index updates; the bundle fingerprint is appended so replicas "
                    "serving different bundles never mix updates.")
    stream_block_ms: int = Field(
        200, ge=1,
        description="How long one XREAD waits for new index updates. New entries wake it at once; this "
                    "only bounds how fast the consumer notices shutdown.")
    write_timeout_s: float = Field(
        10.0, gt=0,
        description="How long /index-documents waits for its update to be applied locally (Redis mode) "
                    "before answering 503. The update is then still applied later.")
    api_key: SecretStr | None = Field(
        None,
        description="When set, /index-documents needs `Authorization: Bearer <key>` or `X-API-Key: <key>` "
                    "(401 otherwise). Unset: writes are open and a warning is logged at start.")
    execution_provider: ExecutionProvider = Field(
        ExecutionProvider.AUTO, description="onnxruntime provider: auto (CUDA when available), cpu, cuda.")
    intra_op_threads: int = Field(
        0, ge=0,
        description="onnxruntime intra-op threads per session; 0 = one per physical core. Lower it when "
                    "several replicas share a machine.")
    allow_spinning: bool = Field(
        False,
        description="Let onnxruntime's threads busy-wait between operators. Saves a little latency on a "
                    "dedicated machine; on a shared or oversubscribed one (several replicas, other jobs) "
                    "spinning threads steal the CPU the model needs (measured 2x slower), hence off.")
    indexer_precision: IndexerPrecision = Field(
        "auto",
        description="Encoder of the indexer (POST /index-documents only; search and recommend always run fp32). "
                    "int8: the bundle's indexer/encoder.int8.onnx, about twice the documents/s on CPU; the export "
                    "wrote it only if its greedy codes agreed with fp32 on at least a minimum share of the checked "
                    "documents (0.9 by default; manifest models.indexer.int8_agreement), so a few new documents "
                    "may get another prefix than fp32 would give them. fp32: the exact encoder (set it when new "
                    "documents must get exactly the IDs the fp32 model gives). auto: int8 when the bundle has it, "
                    "else fp32. int8 on a bundle without it is a start-up error.")
    batch_max_size: int = Field(32, ge=1, description="Most queries sent to the model in one call.")
    batch_max_wait_ms: float = Field(
        0.0, ge=0,
        description="How long the first query of a batch waits for company. Requests that arrive while a "
                    "batch runs are grouped anyway (continuous batching), so the default dispatches at once: "
                    "a wait only adds to single-client latency. Raise it (1-2 ms) for throughput when open-loop "
                    "traffic arrives in bursts shorter than one model call.")
    queue_max_depth: int = Field(
        256, ge=1, description="Queries waiting per model beyond which requests get 429 (Retry-After).")
    beam_size: int = Field(
        20, ge=1,
        description="Beams of the constrained beam search (at least k is used). More beams: better recall, "
                    "slower.")
    search_dense_candidates: int | None = Field(
        None, ge=1, le=10_000,
        description="POST /search in the hybrid mode: N of the dense top-N documents (by cosine of text vectors, over "
                    "every indexed document) joined to the beam's candidates; max(N, k) are taken. More: a wider "
                    "candidate set, slightly slower. Unset: the bundle's models.retriever.search.dense_candidates, "
                    "the N its hybrid weight was chosen with.")
    recommend_exclude_history: bool | None = Field(
        None, description="POST /recommend leaves out the items of the user's whole history (repeat purchases "
                          "are a real use: false keeps them). Unset: the bundle's "
                          "models.recommender.exclude_history.")
    max_query_chars: int = Field(2000, ge=1, description="Longest accepted query (characters); longer: 422.")
    max_history_items: int = Field(
        1000, ge=1, description="Longest accepted history list (only the most recent items, the manifest's "
                               "models.recommender.max_history, reach the model); longer: 422.")
    max_batch_documents: int = Field(
        1000, ge=1, description="Most documents in one /index-documents call; more: 413.")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest accepted request body; larger: 413.")
    max_text_chars: int = Field(
        100_000, ge=1, description="Longest accepted document text (the model reads only its first "
                                   "max_document_length tokens); longer: 422.")
    replica_id: str | None = Field(
        None, description="Name of this replica in logs and stream entries. Default: hostname-pid.")
    log_json: bool = Field(True, description="JSON log lines (one object per line); false for plain text.")
    log_level: str = Field("INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR.")


def unknown_environment_keys(environ: dict[str, str] | None = None) -> list[str]:
    """The LMINDEXER_* environment variables that no service setting reads (likely typos)."""
    environ = dict(os.environ) if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}
    return sorted(k for k in environ
                  if k.upper().startswith(ENV_PREFIX) and k.upper() not in known | _SHARED_ENV_KEYS)
