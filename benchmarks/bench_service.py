"""Benchmark the HTTP service under bounded load from a second process on 127.0.0.1.

Starts the real service (`python -m service`, one uvicorn worker) on a bundle, then drives it from
this process with an asyncio loop of keep-alive HTTP/1.1 connections (RawHttpConnection: httpx
cost more CPU per request than the service, see there):
- /search at 1, 8 and 32 concurrent clients, uncached (every query text unique, so every request
  runs the model; the Redis lookup still happens and misses) and cached (a warmed pool of queries);
  throughput and p50 / p95 / p99 latency;
- the same with a 1,000,000-ID trie (a bundle variant: the same models, 1M random extra IDs);
- /recommend (uncached: histories of 5-20 random catalogue doc_ids, unique per request, in the
  bundle's default mode) at the same concurrencies: p50 at 1 client and throughput at 32 clients
  next to /search's in `recommend_vs_search`;
- /index-documents documents/s (batches of --index-batch new documents, sequential).
Writes JSON with a machine description (benchmarks/results/service.json by default).

    nice -n 10 python benchmarks/bench_service.py --bundle bundles/demo --duration 8 \\
        --out benchmarks/results/service.json
    python benchmarks/bench_service.py --tiny        # the tests' tiny random bundle (smoke run)

The load generator shares the machine's CPUs with the service (2 cores here): figures are a lower
bound on what the service does with the machine to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bundle import FORMAT_VERSION  # noqa: E402
from tests.service.processes import ServiceProcess  # noqa: E402

logger = logging.getLogger("bench_service")

WORDS = ("moisturizing", "vegan", "lavender", "serum", "shampoo", "matte", "lipstick", "waterproof", "mascara",
         "organic", "argan", "oil", "sunscreen", "spf", "face", "mask", "charcoal", "scrub", "rose", "toner",
         "vitamin", "c", "night", "cream", "curl", "defining", "gel", "nail", "polish", "red", "dry", "skin",
         "sensitive", "fragrance", "free", "eye", "cream", "anti", "aging", "hair", "spray", "volume")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values, in the same unit."""
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def make_query(rng: np.random.Generator, unique: int | None = None) -> str:
    """A product-search-like query; `unique` makes it differ from every other (never cached)."""
    words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
    return f"{words} {unique}" if unique is not None else words


class RawHttpConnection:
    """A minimal HTTP/1.1 keep-alive client for POSTing JSON (one connection, one request at a time).

    Why not httpx: at 32 concurrent clients httpx spent 4.7 ms of CPU per request here against
    0.7 ms for the service itself, so on a 2-core machine the load generator, not the service, set the
    throughput. This client costs a small fraction of that. It reads Content-Length bodies only
    (what uvicorn sends for these endpoints).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send one request and return (status, body)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def _load(url: str, concurrency: int, duration_s: float, warmup_s: float, body_for: Any,
                endpoint: str = "/search") -> dict[str, Any]:
    """`concurrency` clients, each on its own keep-alive connection, sending requests back to back."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cached = 0
    counter = [0]
    started = time.perf_counter()
    measure_from = started + warmup_s
    stop_at = measure_from + duration_s

    async def worker() -> None:
        nonlocal cached
        connection = RawHttpConnection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                counter[0] += 1
                body = json.dumps(body_for(counter[0])).encode()
                sent = time.perf_counter()
                status, payload = await connection.post(endpoint, body)
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    latencies.append(done - sent)
                    statuses[status] = statuses.get(status, 0) + 1
                    cached += b'"cached": true' in payload or b'"cached":true' in payload
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ok = statuses.get(200, 0)
    return {
        "concurrency": concurrency, "duration_s": duration_s, "requests": len(latencies),
        "throughput_rps": round(ok / duration_s, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2), "p95_ms": round(percentile(latencies, 95) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "cached_fraction": round(cached / max(1, ok), 3),
    }


def bench_search(url: str, concurrencies: list[int], duration_s: float, seed: int) -> dict[str, Any]:
    """Uncached and cached /search at each concurrency."""
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {"uncached": [], "cached": []}
    run_id = int(time.time() * 1000)
    for concurrency in concurrencies:
        base = rng.integers(1 << 30)
        result = asyncio.run(_load(url, concurrency, duration_s, 1.0,
                                   lambda n, base=base: {"query": make_query(rng, unique=run_id + base + n), "k": 10}))
        logger.info("uncached c=%d: %s", concurrency, result)
        results["uncached"].append(result)
    pool = [make_query(rng) for _ in range(64)]
    with httpx.Client(base_url=url, timeout=30) as client:  # warm the cache
        for query in pool:
            client.post("/search", json={"query": query, "k": 10})
    for concurrency in concurrencies:
        result = asyncio.run(_load(url, concurrency, duration_s, 0.5,
                                   lambda n: {"query": pool[n % len(pool)], "k": 10}))
        logger.info("cached c=%d: %s", concurrency, result)
        results["cached"].append(result)
    return results


def bench_recommend(url: str, concurrencies: list[int], duration_s: float, seed: int,
                    doc_ids: list[str]) -> list[dict[str, Any]]:
    """Uncached /recommend at each concurrency: each request a fresh random history (5 to 20 doc_ids of the
    catalogue, oldest first), so the Redis lookup misses and the model runs."""
    rng = np.random.default_rng(seed + 1)
    results = []

    def body(n: int) -> dict[str, Any]:
        picks = rng.choice(len(doc_ids), size=int(rng.integers(5, 21)), replace=False)
        return {"history": [doc_ids[int(i)] for i in picks], "k": 10}

    for concurrency in concurrencies:
        result = asyncio.run(_load(url, concurrency, duration_s, 1.0, body, endpoint="/recommend"))
        logger.info("recommend c=%d: %s", concurrency, result)
        results.append(result)
    return results


def recommend_vs_search(search: list[dict[str, Any]], recommend: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 at 1 client and throughput at 32 clients of /recommend next to /search's (uncached)."""
    def at(rows: list[dict[str, Any]], concurrency: int, key: str) -> float | None:
        return next((r[key] for r in rows if r["concurrency"] == concurrency), None)

    return {"search_p50_1_client_ms": at(search, 1, "p50_ms"), "recommend_p50_1_client_ms": at(recommend, 1, "p50_ms"),
            "search_throughput_32_clients_rps": at(search, 32, "throughput_rps"),
            "recommend_throughput_32_clients_rps": at(recommend, 32, "throughput_rps")}


def bench_indexing(url: str, batch: int, batches: int, seed: int) -> dict[str, Any]:
    """Sequential /index-documents batches of new documents: documents per second."""
    rng = np.random.default_rng(seed)
    run_id = int(time.time())
    texts = [text for _, text in beauty_texts()]
    times = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for b in range(batches):
            # Real Beauty item texts (realistic lengths), made new so each gets a fresh ID.
            docs = [{"doc_id": f"bench-{run_id}-{b}-{i}",
                     "text": f"{texts[int(rng.integers(len(texts)))]} (edition {run_id}-{b}-{i})"}
                    for i in range(batch)]
            started = time.perf_counter()
            response = client.post("/index-documents", json={"documents": docs})
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"/index-documents answered {response.status_code}: {response.text[:300]}")
    measured = times[1:] if len(times) > 1 else times  # the first batch pays one-time allocations
    return {"batch_size": batch, "batches": len(measured),
            "documents_per_s": round(batch * len(measured) / sum(measured), 1),
            "p50_batch_ms": round(percentile(measured, 50) * 1000, 1)}


def build_large_trie_variant(bundle: Path, out: Path, total_ids: int, seed: int) -> Path:
    """A copy of `bundle` (models linked, not copied) whose trie holds `total_ids` IDs (random extras)."""
    from bundle import Bundle, write_manifest
    from trie import SemanticIdTrie

    manifest = Bundle.open(bundle).manifest
    sizes = list(manifest.codebook_sizes)
    capacity = int(np.prod(sizes, dtype=np.float64))
    out.mkdir(parents=True, exist_ok=True)
    for entry in bundle.iterdir():
        if entry.name not in ("trie.bin", "documents.jsonl", "manifest.json") and not (out / entry.name).exists():
            (out / entry.name).symlink_to(entry.resolve())
    documents = [json.loads(line) for line in (bundle / "documents.jsonl").read_text().splitlines() if line.strip()]
    existing = np.asarray([d["semantic_id"] for d in documents], dtype=np.int64)
    wanted = min(total_ids, int(capacity * 0.9))
    rng = np.random.default_rng(seed)
    multipliers = np.cumprod([1, *sizes[::-1][:-1]])[::-1].astype(np.int64)
    taken = set((existing * multipliers).sum(1).tolist())
    extra_keys: list[int] = []
    while len(extra_keys) < wanted - len(existing):
        draws = rng.integers(0, capacity, size=2 * (wanted - len(existing)), dtype=np.int64)
        for key in np.unique(draws):
            if int(key) not in taken:
                taken.add(int(key))
                extra_keys.append(int(key))
        extra_keys = extra_keys[: wanted - len(existing)]
    keys = np.asarray(extra_keys, dtype=np.int64)
    extra = np.stack([(keys // m) % s for m, s in zip(multipliers, sizes, strict=True)], axis=1)
    ids = np.concatenate([existing, extra])
    SemanticIdTrie.build(ids, codebook_sizes=sizes).save(out / "trie.bin")
    with open(out / "documents.jsonl", "w", encoding="utf-8") as f:
        for d in documents:
            f.write(json.dumps(d) + "\n")
        for i, sid in enumerate(extra.tolist()):
            f.write(json.dumps({"doc_id": f"rand-{i}", "text": f"random document {i}", "metadata": {},
                                "semantic_id": sid}) + "\n")
    write_manifest(out, dataclasses.replace(
        manifest, num_documents=len(ids),
        training_config={**manifest.training_config, "bench_variant": f"{len(ids)} IDs"}))
    return out


def beauty_texts(limit: int | None = None) -> list[tuple[str, str]]:
    """(asin, rendered text) of the vendored Amazon Beauty items: realistic document lengths."""
    import gzip

    out = []
    with gzip.open(REPO / "data" / "amazon-beauty" / "items.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            item = json.loads(line)
            out.append((item["asin"], f"title: {item.get('title', '')}, brand: {item.get('brand', '')}, "
                                      f"category: {item.get('first_category_path', '')}"))
            if limit and len(out) >= limit:
                break
    return out


def build_minilm_bundle(out: Path, *, codebook_size: int = 256, counter_size: int = 64, seed: int = 0) -> Path:
    """A bundle with the real default encoder (MiniLM) and training's ID decoder, untrained.

    For cost only: the graphs are exactly what `lmindexer export` writes (training's
    SemanticIdNetwork through training.downstream.export.export_onnx), so the per-request work is the
    real one; the answers are meaningless. The 12,101 Beauty items get random unique IDs (K=256 so
    the same models also fit the 1M-ID trie variant). The indexer also gets its int8 encoder, by the
    export's own helper, so /index-documents runs the service's default path; its agreement with
    fp32 is measured and recorded but not required (the untrained decoder's codes mean nothing).
    """
    import torch

    from bundle import TextTokenizer, write_manifest
    from tests.service.tiny_bundle import (
        tokenizer_path,
        untrained_manifest,
        untrained_recommender,
        write_item_vectors,
    )
    from training.downstream.export import export_onnx, write_int8_encoder
    from training.indexing.network import NetworkConfig, SemanticIdNetwork
    from trie import SemanticIdTrie

    torch.manual_seed(seed)
    config = NetworkConfig(num_levels=2, codebook_size=codebook_size, counter_size=counter_size,
                           decoder_layers=1, decoder_ff_size=512)
    network = SemanticIdNetwork(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("indexer", "retriever"):
        export_onnx(network, out / name)
    shutil.copy(tokenizer_path(), out / "tokenizer.json")
    items = beauty_texts()
    sizes = list(config.codebook_sizes)
    rng = np.random.default_rng(seed)
    keys = rng.choice(int(np.prod(sizes)), size=len(items), replace=False)
    multipliers = np.cumprod([1, *sizes[::-1][:-1]])[::-1].astype(np.int64)
    ids = np.stack([(keys // m) % s for m, s in zip(multipliers, sizes, strict=True)], axis=1)
    # 100 documents, as the export's parity inputs; minimum 0: always written (see the docstring).
    sample = [items[int(i)][1] for i in rng.choice(len(items), size=100, replace=False)]
    int8 = write_int8_encoder(out / "indexer", sample, TextTokenizer(out / "tokenizer.json", 128), sizes,
                              min_prefix_agreement=0.0)
    SemanticIdTrie.build(ids, codebook_sizes=sizes).save(out / "trie.bin")
    with open(out / "documents.jsonl", "w", encoding="utf-8") as f:
        for (asin, text), sid in zip(items, ids.tolist(), strict=True):
            f.write(json.dumps({"doc_id": asin, "text": text, "metadata": {}, "semantic_id": sid}) + "\n")
    # The item-token recommender at the cpu preset's size (d_model 128, 50 items of history), untrained;
    # random unit item vectors of MiniLM's width: the per-request work is the real one.
    vectors = rng.normal(size=(len(items), network.hidden_size)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    recommender = untrained_recommender(out, vectors, sizes, max_history=50, d_model=128, seed=seed)
    write_manifest(out, untrained_manifest(
        num_levels=2, codebook_size=codebook_size, counter_size=counter_size, num_documents=len(items),
        hidden_size=network.hidden_size, int8_file=f"indexer/{int8.file}", int8_agreement=int8.agreement,
        recommender=recommender, item_vectors=write_item_vectors(out, vectors),
        note="benchmark bundle: MiniLM + untrained ID decoder (1 layer), untrained item-token recommender"))
    return out


def bench_generate_path(bundle: Path, *, decoder_layers: int, singles: int, batch_sizes: list[int],
                        seed: int) -> dict[str, Any]:
    """The same-sized model decoded the official LMIndexer way, in process (no HTTP): a T5 (MiniLM-sized
    encoder: d=384, ff 1536, 6 layers, 12 heads; `decoder_layers` like the bundle's ID decoder) through
    transformers' ``generate`` (beam 20, 10 returned) with ``prefix_allowed_tokens_fn`` over a dict
    trie ``{prefix: [allowed next tokens]}`` of the bundle's IDs. Random weights: only cost matters.
    """
    # Passive OpenMP waits, as the service's onnxruntime threads do not spin either: on a shared machine
    # spinning threads made generate() 16x slower here. Must be set before torch starts its threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from bundle import Bundle, TextTokenizer

    torch.manual_seed(seed)
    opened = Bundle.open(bundle)
    manifest = opened.manifest
    sizes = list(manifest.codebook_sizes)
    offsets = np.cumsum([0, *sizes[:-1]])
    text_vocab = 30522
    first_code = text_vocab + 2  # 0 pad/decoder start, 1 eos (never allowed: generation stops at L+1)
    config = T5Config(vocab_size=first_code + int(sum(sizes)), d_model=384, d_kv=32, d_ff=1536, num_layers=6,
                      num_decoder_layers=decoder_layers, num_heads=12, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(config).eval()
    ids = [json.loads(line)["semantic_id"] for line in (bundle / "documents.jsonl").read_text().splitlines()
           if line.strip()]
    allowed: dict[tuple[int, ...], list[int]] = {}
    for sid in ids:
        tokens = [first_code + int(offsets[level]) + code for level, code in enumerate(sid)]
        for depth in range(len(tokens)):
            allowed.setdefault(tuple(tokens[:depth]), [])
            if tokens[depth] not in allowed[tuple(tokens[:depth])]:
                allowed[tuple(tokens[:depth])].append(tokens[depth])

    def prefix_allowed_tokens_fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return allowed.get(tuple(input_ids.tolist()[1:]), [])

    # The retriever's input length (the searches generate stands in for), as the service reads queries.
    query_model = manifest.models["retriever"]
    tokenizer = TextTokenizer(opened.path(manifest.tokenizer), query_model.max_input_length)
    rng = np.random.default_rng(seed)

    def run(queries: list[str]) -> None:
        input_ids, attention_mask = tokenizer.encode(queries)
        with torch.inference_mode():
            model.generate(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                           num_beams=20, num_return_sequences=10, max_new_tokens=len(sizes), min_new_tokens=len(sizes),
                           do_sample=False, early_stopping=False, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)

    result: dict[str, Any] = {
        "model": {"d_model": 384, "encoder_layers": 6, "decoder_layers": decoder_layers, "beam": 20, "top_k": 10,
                  "trie": f"dict of prefixes over {len(ids)} IDs", "vocab": config.vocab_size},
        "by_torch_threads": {}}
    # Both thread counts: on a shared machine 1 thread can beat 2; the comparison uses the better one.
    for threads in (1, 2):
        torch.set_num_threads(threads)
        run([make_query(rng)])  # warm-up
        single = []
        for i in range(singles):
            started = time.perf_counter()
            run([make_query(rng, unique=i)])
            single.append(time.perf_counter() - started)
        figures: dict[str, Any] = {"single_query_p50_ms": round(percentile(single, 50) * 1000, 2),
                                   "single_query_p95_ms": round(percentile(single, 95) * 1000, 2)}
        for size in batch_sizes:
            started = time.perf_counter()
            repeats = max(1, 64 // size)
            for r in range(repeats):
                run([make_query(rng, unique=1000 + r * size + j) for j in range(size)])
            figures[f"batch_{size}_queries_per_s"] = round(size * repeats / (time.perf_counter() - started), 1)
        result["by_torch_threads"][str(threads)] = figures
    runs = result["by_torch_threads"].values()
    result["best_single_query_p50_ms"] = min(f["single_query_p50_ms"] for f in runs)
    result["best_queries_per_s"] = max(f[f"batch_{size}_queries_per_s"] for f in runs for size in batch_sizes)
    logger.info("generate path: %s", result)
    return result


def machine_description() -> dict[str, Any]:
    """CPU, memory, versions: what the figures depend on."""
    import onnxruntime

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    except (OSError, StopIteration):
        mem_kb = 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "memory_gib": round(mem_kb / 1024 / 1024, 1), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers(), "git_commit": commit,
            "load_average_at_start": os.getloadavg()}


def run_bundle(name: str, bundle: Path, args: argparse.Namespace, workdir: Path, *,
               index: bool) -> dict[str, Any]:
    """Start the service on `bundle` and run the search (and indexing) benchmarks."""
    import redis

    env = {"LMINDEXER_INTRA_OP_THREADS": str(args.intra_op_threads), "LMINDEXER_LOG_LEVEL": "WARNING"}
    if args.redis_url:
        redis.Redis.from_url(args.redis_url).flushdb()
    service = ServiceProcess(bundle, workdir / f"{name}.sqlite3", redis_url=args.redis_url, env=env,
                             log_path=workdir / f"{name}.log")
    started = time.perf_counter()
    service.start(timeout_s=600)
    startup_s = time.perf_counter() - started
    try:
        info = httpx.get(f"{service.url}/info", timeout=10).json()
        result: dict[str, Any] = {"bundle": str(bundle), "num_ids": info["num_documents"],
                                  "semantic_ids": info["manifest"]["semantic_ids"],
                                  "startup_s": round(startup_s, 1), "execution_providers": info["execution_providers"],
                                  "indexer_precision": info.get("indexer_precision")}
        result["search"] = bench_search(service.url, args.concurrency, args.duration, args.seed)
        if "recommender" in info["models"]:
            doc_ids = [json.loads(line)["doc_id"] for line in (bundle / "documents.jsonl").open(encoding="utf-8")
                       if line.strip()]
            result["recommend"] = bench_recommend(service.url, args.concurrency, args.duration, args.seed, doc_ids)
            result["recommend_vs_search"] = recommend_vs_search(result["search"]["uncached"], result["recommend"])
            logger.info("recommend vs search: %s", result["recommend_vs_search"])
        if index:
            result["index_documents"] = bench_indexing(service.url, args.index_batch, args.index_batches, args.seed)
            logger.info("indexing: %s", result["index_documents"])
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        result["load_average_after"] = os.getloadavg()
        result["invalid_ids_total"] = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                          if line.startswith("lmindexer_invalid_ids_total{"))
        return result
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="Bundle to serve (e.g. bundles/demo).")
    parser.add_argument("--tiny", action="store_true", help="Use the tests' tiny random bundle instead.")
    parser.add_argument("--minilm", type=Path, metavar="DIR",
                        help="Build (once) and use a MiniLM-cost bundle in DIR: the default encoder and "
                             "training's ID decoder, untrained (for when no demo bundle is at hand).")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=8.0, help="Measured seconds per load level.")
    parser.add_argument("--large-trie-ids", type=int, default=1_000_000,
                        help="IDs in the large-trie variant (0 skips it).")
    parser.add_argument("--index-batch", type=int, default=100)
    parser.add_argument("--index-batches", type=int, default=11)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="Redis for the result cache (flushed at start); '' for none.")
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--generate", action="store_true",
                        help="Also time the generate() path (transformers T5 + prefix_allowed_tokens_fn) in process.")
    parser.add_argument("--only-generate", action="store_true", help="Time only the generate() path.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "service.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would cost client CPU
    if args.tiny:
        from tests.service.tiny_bundle import cached_tiny_bundle

        args.bundle = cached_tiny_bundle()
    if args.minilm is not None:
        manifest_path = args.minilm / "manifest.json"
        # A bundle of an older format cannot be served: build it again.
        if not manifest_path.is_file() or json.loads(manifest_path.read_text()).get("format_version") != FORMAT_VERSION:
            logger.info("building the MiniLM-cost bundle in %s", args.minilm)
            build_minilm_bundle(args.minilm, seed=args.seed)
        args.bundle = args.minilm
    if args.bundle is None or not (args.bundle / "manifest.json").is_file():
        parser.error("give --bundle DIR (a bundle with manifest.json; `lmindexer build-demo --out DIR`) or --tiny")
    args.redis_url = args.redis_url or None
    workdir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    report: dict[str, Any] = {
        "benchmark": "service", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([sys.executable, *sys.argv]), "machine": machine_description(),
        "settings": {"concurrency": args.concurrency, "duration_s": args.duration, "k": 10,
                     "redis_url": args.redis_url, "index_batch": args.index_batch,
                     "intra_op_threads": args.intra_op_threads, "beam_size": 20},
        "bundle_manifest": {k: v for k, v in json.loads((args.bundle / "manifest.json").read_text()).items()
                            if k in ("semantic_ids", "models", "num_documents", "created_at")},
        "runs": {},
    }
    try:
        if args.generate or args.only_generate:
            report["generate_path"] = bench_generate_path(args.bundle, decoder_layers=1, singles=20,
                                                          batch_sizes=[8, 32], seed=args.seed)
        if args.only_generate:
            return 0
        report["runs"]["bundle"] = run_bundle("bundle", args.bundle, args, workdir, index=True)
        if args.large_trie_ids:
            large = build_large_trie_variant(args.bundle, workdir / "large-trie-bundle", args.large_trie_ids, args.seed)
            report["runs"]["large_trie"] = run_bundle("large", large, args, workdir, index=False)
        if "generate_path" in report:
            generate = report["generate_path"]
            uncached = report["runs"]["bundle"]["search"]["uncached"]
            p50_one = next(r["p50_ms"] for r in uncached if r["concurrency"] == 1)
            best_rps = max(r["throughput_rps"] for r in uncached)
            at_32 = next((r["throughput_rps"] for r in uncached if r["concurrency"] == 32), best_rps)
            report["versus_generate"] = {
                "p50_1_client_speedup": round(generate["best_single_query_p50_ms"] / p50_one, 1),
                "throughput_32_clients_ratio": round(at_32 / generate["best_queries_per_s"], 1),
                "note": "service over HTTP vs generate() in process, same bundle IDs, same run"}
    finally:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        logger.info("wrote %s", args.out)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
