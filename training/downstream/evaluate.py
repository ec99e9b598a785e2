"""Decoding with constrained beam search over the trie, and scoring the decoded rankings.

`trie.constrained_beam_search` is model-agnostic: it calls
``step_fn(level, query_index (N,), prefixes (N, level)) -> (N, codebook_sizes[level]) log-probs``
for the live beams only. `grouped_step_fn` + `model_step` adapt a decoder step of the bundle's signature
``(encoder_states (B, S, d), attention_mask (B, S), codes (B, W, L), level) -> (B, W, V)``
(the torch network's `decoder_step` or the ONNX graph run by onnxruntime) to it: they group the
live beams by query into a (B, W, L) block, padding ragged beam counts with code 0 (padding rows
are computed and dropped), so each query's encoder states are computed once per batch.

Rankings become TREC runs (query_id -> doc_id -> summed log-probability of the beam) scored
with `training.metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.data.trec import Run
from training.indexing.network import SemanticIdNetwork
from training.progress import progress_bar

logger = logging.getLogger(__name__)

# (encoder_states, attention_mask, codes (B, W, L), level) -> log-probs (B, W, V), numpy in and out.
DecoderStep = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]
# (queries (B,), codes (B, W, L), level) -> log-probs (B, W, V): a step over a subset of a batch's queries.
QueryStep = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
StepFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def grouped_step_fn(step: QueryStep, num_levels: int, codebook_sizes: Sequence[int]) -> StepFn:
    """A trie step function from a query-grouped step.

    step(queries (B,), codes (B, W, L), level) -> (B, W, V) log-probs, where `queries` are the indices
    of the queries (into the search's batch) that still have live beams.
    """
    def step_fn(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        query_index = np.asarray(query_index, dtype=np.int64)  # (N,)
        prefixes = np.asarray(prefixes, dtype=np.int64).reshape(len(query_index), level)  # (N, level)
        queries, slot_query = np.unique(query_index, return_inverse=True)  # (B,), (N,) -> 0..B-1
        slot_query = slot_query.reshape(-1)
        # Position of each beam within its query's group: a stable sort by query, then a running index.
        order = np.argsort(slot_query, kind="stable")
        counts = np.bincount(slot_query, minlength=len(queries))  # (B,)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot_beam = np.empty_like(slot_query)
        slot_beam[order] = np.arange(len(order)) - np.repeat(starts, counts)
        width = int(counts.max())
        codes = np.zeros((len(queries), width, num_levels), dtype=np.int64)  # (B, W, L), unread columns 0
        codes[slot_query, slot_beam, :level] = prefixes
        log_probs = step(queries, codes, level)  # (B, W, V)
        return log_probs[slot_query, slot_beam, : codebook_sizes[level]]  # (N, size)
    return step_fn


def model_step(decoder_step: DecoderStep, encoder_states: np.ndarray, attention_mask: np.ndarray) -> QueryStep:
    """A query-grouped step over precomputed encoder states (Q, S, d) and mask (Q, S) of Q queries."""
    def step(queries: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        return decoder_step(encoder_states[queries], attention_mask[queries], codes, level)
    return step


class TorchModel:
    """The torch network behind the bundle's two functions: encode(texts) and decoder_step (numpy I/O)."""

    def __init__(self, network: SemanticIdNetwork, tokenizer: Any, max_length: int,
                 device: str | torch.device | None = None) -> None:
        self.network = network.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network.to(self.device)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) int64 input ids and attention mask."""
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="np")
        return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)

    @torch.inference_mode()
    def encode_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, S) ids and mask -> encoder states (B, S, d) float32."""
        states = self.network.encode(torch.from_numpy(input_ids).to(self.device),
                                     torch.from_numpy(attention_mask).to(self.device))
        return states.float().cpu().numpy()

    @torch.inference_mode()
    def decoder_step(self, encoder_states: np.ndarray, attention_mask: np.ndarray, codes: np.ndarray,
                     level: int) -> np.ndarray:
        """The network's decoder_step on numpy arrays: (B, W, V) float32 log-probs."""
        out = self.network.decoder_step(torch.from_numpy(encoder_states).to(self.device),
                                        torch.from_numpy(attention_mask).to(self.device),
                                        torch.from_numpy(codes).to(self.device),
                                        torch.tensor(level, dtype=torch.long, device=self.device))
        return out.float().cpu().numpy()


@dataclass
class Decoded:
    """Top-k decoded IDs for Q queries (trie.BeamSearchResult's arrays, concatenated over batches)."""

    semantic_ids: np.ndarray  # (Q, k, L+1), -1 padding
    scores: np.ndarray  # (Q, k) summed log-probs, -inf padding
    rows: np.ndarray  # (Q, k) trie rows, -1 padding
    counts: np.ndarray  # (Q,)
    seconds: float


def beam_search(model: Any, texts: Sequence[str], trie: Any, beam_size: int = 20, top_k: int = 10,
                batch_size: int = 32, progress: bool = False) -> Decoded:
    """Constrained beam search for every text, `batch_size` queries at a time.

    `model` has tokenize(texts) -> (ids, mask), encode_ids(ids, mask) -> states and
    decoder_step(states, mask, codes, level) -> log-probs (TorchModel or the ONNX model of export).
    """
    from trie import constrained_beam_search

    sizes = tuple(trie.codebook_sizes)
    num_levels = len(sizes) - 1
    parts: list[Any] = []
    started = time.perf_counter()
    for start in progress_bar(range(0, len(texts), batch_size), desc="beam search", unit="batch", disable=not progress):
        chunk = texts[start:start + batch_size]
        ids, mask = model.tokenize(chunk)
        states = model.encode_ids(ids, mask)
        step_fn = grouped_step_fn(model_step(model.decoder_step, states, mask), num_levels, sizes)
        parts.append(constrained_beam_search(step_fn, trie, num_queries=len(chunk), beam_size=beam_size,
                                             top_k=top_k))
    seconds = time.perf_counter() - started
    if not parts:
        width = num_levels + 1
        return Decoded(np.zeros((0, top_k, width), np.int64), np.zeros((0, top_k)), np.zeros((0, top_k), np.int64),
                       np.zeros(0, np.int64), seconds)
    return Decoded(semantic_ids=np.concatenate([p.semantic_ids for p in parts]),
                   scores=np.concatenate([p.scores for p in parts]),
                   rows=np.concatenate([p.rows for p in parts]),
                   counts=np.concatenate([p.counts for p in parts]), seconds=seconds)


def decoded_run(decoded: Decoded, query_ids: Sequence[str], row_doc_ids: Sequence[str]) -> Run:
    """A TREC run from decoded rows: query_id -> doc_id -> beam score (summed log-probability).

    Scores are made strictly decreasing in beam order (a tie is nudged down by 1e-9) so the run's
    order is the beam's order whatever tie-break the scorer uses.
    """
    run: Run = {}
    for q, query_id in enumerate(query_ids):
        ranking: dict[str, float] = {}
        previous = np.inf
        for rank in range(int(decoded.counts[q])):
            row = int(decoded.rows[q, rank])
            score = float(decoded.scores[q, rank])
            score = min(score, previous - 1e-9)
            previous = score
            ranking[row_doc_ids[row]] = score
        run[query_id] = ranking
    return run


def score_run(run: Run, qrels: Mapping[str, Mapping[str, int]], metrics: Sequence[str]) -> dict[str, float]:
    """Mean metrics over the queries of `qrels` (training.metrics conventions)."""
    from training.metrics import evaluate

    return evaluate(run, qrels, metrics)


def restrict_qrels(qrels: Mapping[str, Mapping[str, int]], keep: Callable[[str], bool]) -> dict[str, dict[str, int]]:
    """Qrels with only the relevant documents for which `keep(doc_id)`; queries left with none dropped.

    Used to score cold-start documents apart from the others.
    """
    out: dict[str, dict[str, int]] = {}
    for query_id, judged in qrels.items():
        kept = {d: g for d, g in judged.items() if g > 0 and keep(d)}
        if kept:
            out[query_id] = kept
    return out


def per_query_latency(model: Any, texts: Sequence[str], trie: Any, beam_size: int = 20,
                      top_k: int = 10) -> dict[str, float]:
    """Seconds per query, one query at a time (tokenize + encode + constrained beam search), after a
    warm-up query: the latency one request sees with no batching. Returns mean, median and p95."""
    beam_search(model, list(texts[:1]), trie, beam_size=beam_size, top_k=top_k, batch_size=1)  # warm-up
    seconds = []
    for text in texts:
        started = time.perf_counter()
        beam_search(model, [text], trie, beam_size=beam_size, top_k=top_k, batch_size=1)
        seconds.append(time.perf_counter() - started)
    values = np.asarray(seconds)
    return {"mean_s": float(values.mean()), "median_s": float(np.median(values)),
            "p95_s": float(np.percentile(values, 95)), "queries": len(values), "beam_size": beam_size}
