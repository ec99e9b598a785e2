"""Decoding with constrained beam search over the trie, and scoring the decoded rankings.

`trie.constrained_beam_search` is model-agnostic: it calls
``step_fn(level, query_index (N,), prefixes (N, level)) -> (N, codebook_sizes[level])`` log-probs
for the live beams only. `TorchModel` has the interface of the bundle's runner (`bundle.OnnxRunner`):
``encode(texts) -> Encoded`` once per query, then ``step_fn(encoded)``, which groups the live beams by
query into (B, W, L) blocks for the network's decoder step through `bundle.grouped_step_fn`, the same
grouping the export's parity check and the service decode with.

Rankings become TREC runs (query_id -> doc_id -> summed log-probability of the beam) scored
with `training.metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from bundle import Encoded, grouped_step_fn
from training.data.trec import Run
from training.indexing.network import SemanticIdNetwork
from training.metrics import evaluate
from training.progress import progress_bar
from trie import StepFn, constrained_beam_search

logger = logging.getLogger(__name__)

class TorchModel:
    """The torch network behind the bundle's two functions, encode and decoder_step (numpy I/O), with the
    decoding interface of `bundle.OnnxRunner`: encode(texts) -> Encoded, step_fn(encoded) -> trie StepFn."""

    def __init__(self, network: SemanticIdNetwork, tokenizer: Any, max_length: int,
                 device: str | torch.device | None = None) -> None:
        self.network = network.eval()
        self.codebook_sizes = tuple(network.config.codebook_sizes)
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

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenize and encode a batch of texts: states (B, S, d) float32, mask (B, S) int64."""
        ids, mask = self.tokenize(texts)
        return Encoded(self.encode_ids(ids, mask), mask)

    def step_fn(self, encoded: Encoded) -> StepFn:
        """The trie StepFn decoding `encoded`'s inputs with the network's decoder step (bundle.grouped_step_fn)."""
        def step(queries: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
            part = encoded.rows(queries)
            return self.decoder_step(part.states, part.attention_mask, codes, level)
        return grouped_step_fn(step, self.codebook_sizes)


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

    `model` has encode(texts) -> Encoded and step_fn(encoded) -> trie StepFn (TorchModel or bundle.OnnxRunner).
    """
    sizes = tuple(trie.codebook_sizes)
    num_levels = len(sizes) - 1
    parts: list[Any] = []
    started = time.perf_counter()
    for start in progress_bar(range(0, len(texts), batch_size), desc="beam search", unit="batch", disable=not progress):
        chunk = texts[start:start + batch_size]
        parts.append(constrained_beam_search(model.step_fn(model.encode(chunk)), trie, num_queries=len(chunk),
                                             beam_size=beam_size, top_k=top_k))
    seconds = time.perf_counter() - started
    if not parts:
        width = num_levels + 1
        return Decoded(np.zeros((0, top_k, width), np.int64), np.zeros((0, top_k)), np.zeros((0, top_k), np.int64),
                       np.zeros(0, np.int64), seconds)
    return Decoded(semantic_ids=np.concatenate([p.semantic_ids for p in parts]),
                   scores=np.concatenate([p.scores for p in parts]),
                   rows=np.concatenate([p.rows for p in parts]),
                   counts=np.concatenate([p.counts for p in parts]), seconds=seconds)


class Ranked(Protocol):
    """A ranking of Q queries, best first: rows (Q, k) trie rows, scores (Q, k), counts (Q,) valid results
    (`Decoded`, or a hybrid ranking, `bundle.SearchRanking`)."""

    rows: np.ndarray
    scores: np.ndarray
    counts: np.ndarray


def decoded_run(decoded: Ranked, query_ids: Sequence[str], row_doc_ids: Sequence[str]) -> Run:
    """A TREC run from ranked rows: query_id -> doc_id -> score (the beam's summed log-probability, or the
    hybrid rule's score).

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
