"""ONNX export of the item-token recommender and its parity check through the bundle's runner.

Three graphs (signatures in `bundle.recommendation` and docs/bundle.md) from `Recommender`:

- `sequence_model.onnx`: item vectors and codes of a left-padded history (W = max_history, fixed)
  -> the hidden state at the most recent item (`item_tokens`, then `encode`);
- `decoder_step.onnx`: hidden (B, d), codes (B, K, L), level -> log-probs (B, K, V): the ID
  decoder's states over all L + 1 positions (causal, so position `level` reads codes < level only),
  every level's log-softmax padded to V = max K, the one of `level` gathered;
- `dense_head.onnx`: hidden (B, d), candidates' vectors (B, K, D) and codes (B, K, L + 1) -> the
  dense head's scores (B, K) = dense_query(hidden) . item token.

`check_parity` ranks the parity histories with the torch model and with the ONNX runner through the
one ranking function (`bundle.recommendation.recommend`), in both modes, and measures the graphs'
largest differences on identical inputs; the rankings must agree up to near ties
(`bundle.recommendation.near_tie_agreement`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bundle.manifest import RECOMMEND_MODES, RecommenderParity
from bundle.recommendation import (
    RECHECK_BEAM,
    History,
    Recommendations,
    RecommenderRunner,
    near_tie_agreement,
    recommend,
)
from training.recommendation.model import Recommender
from trie import SemanticIdTrie

OPSET = 17
FILES = {"sequence_model": "sequence_model.onnx", "decoder_step": "decoder_step.onnx",
         "dense_head": "dense_head.onnx"}


class _SequenceGraph(nn.Module):
    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, vectors: torch.Tensor, codes: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        # vectors (B, W, D), codes (B, W, L + 1), padding (B, W) bool -> hidden (B, d) at the last position
        return self.model.encode(self.model.item_tokens(vectors, codes), padding)[:, -1]


class _DecoderStepGraph(nn.Module):
    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model
        self.width = max(model.codebook_sizes)

    def forward(self, hidden: torch.Tensor, codes: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        decoder = self.model.id_decoder
        b, k, num_levels = codes.shape
        flat = hidden[:, None, :].expand(b, k, hidden.shape[-1]).reshape(-1, hidden.shape[-1])  # (B K, d)
        states = decoder.states(flat, codes.reshape(-1, num_levels))  # (B K, L + 1, d)
        padded = [F.pad(head(states[:, j]).log_softmax(dim=-1), (0, self.width - head.out_features), value=-1e9)
                  for j, head in enumerate(decoder.heads)]  # L + 1 of (B K, V)
        return torch.stack(padded)[level].reshape(b, k, self.width)


class _DenseHeadGraph(nn.Module):
    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden: torch.Tensor, vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        query = self.model.dense_query(hidden)  # (B, d)
        return (query[:, None, :] * self.model.item_tokens(vectors, codes)).sum(-1)  # (B, K)


@torch.no_grad()
def export_onnx(model: Recommender, directory: Path, text_dim: int) -> dict[str, str]:
    """Write the three graphs into `directory`; returns their file names by role (`FILES`)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    # Tracing and constant folding warn about frozen shapes and values; check_parity, run on every export,
    # is the check that matters.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    width = model.max_history
    levels = len(model.codebook_sizes)
    vectors = torch.randn(2, width, text_dim)
    codes = torch.zeros(2, width, levels, dtype=torch.long)
    padding = torch.zeros(2, width, dtype=torch.bool)
    padding[1, : width - 1] = True
    torch.onnx.export(_SequenceGraph(model).eval(), (vectors, codes, padding), str(directory / FILES["sequence_model"]),
                      input_names=["vectors", "codes", "padding"], output_names=["hidden"],
                      dynamic_axes={"vectors": {0: "B"}, "codes": {0: "B"}, "padding": {0: "B"}, "hidden": {0: "B"}},
                      dynamo=False, opset_version=OPSET)
    hidden = torch.randn(2, model.settings.d_model)
    prefixes = torch.zeros(2, 3, levels - 1, dtype=torch.long)
    torch.onnx.export(_DecoderStepGraph(model).eval(), (hidden, prefixes, torch.tensor(min(1, levels - 1))),
                      str(directory / FILES["decoder_step"]), input_names=["hidden", "codes", "level"],
                      output_names=["log_probs"],
                      dynamic_axes={"hidden": {0: "B"}, "codes": {0: "B", 1: "K"}, "log_probs": {0: "B", 1: "K"}},
                      dynamo=False, opset_version=OPSET)
    candidates = torch.randn(2, 3, text_dim)
    candidate_codes = torch.zeros(2, 3, levels, dtype=torch.long)
    torch.onnx.export(_DenseHeadGraph(model).eval(), (hidden, candidates, candidate_codes),
                      str(directory / FILES["dense_head"]), input_names=["hidden", "vectors", "codes"],
                      output_names=["scores"],
                      dynamic_axes={"hidden": {0: "B"}, "vectors": {0: "B", 1: "K"}, "codes": {0: "B", 1: "K"},
                                    "scores": {0: "B", 1: "K"}},
                      dynamo=False, opset_version=OPSET)
    return dict(FILES)


def item_id_offsets(model: Recommender, num_items: int) -> tuple[np.ndarray, float] | None:
    """The model's item ID embeddings moved into the text vectors' space for the bundle (``Recommender.
    item_id_offsets``): (N, D) float32, row i for catalogue item i + 1 (= trie row i), and how far they miss
    the embeddings (max |W_text o_i - E_item[i]|, for the export's tolerance); None without item ID
    embeddings. Raises ValueError when the model's embedding table is not of ``num_items`` items."""
    if model.item_embedding is None:
        return None
    if model.item_embedding.num_embeddings != num_items + 1:
        raise ValueError(f"{model.item_embedding.num_embeddings - 1} item ID embeddings for {num_items} items")
    with torch.no_grad():
        offsets = model.item_id_offsets()  # (N + 1, D)
        error = float((offsets.double() @ model.text_projection.weight.double().T
                       - model.item_embedding.weight.double()).abs().max())
    return np.ascontiguousarray(offsets[1:].numpy(), dtype=np.float32), error


class TorchGraphs:
    """`bundle.recommendation.RecommenderGraphs` over the torch model (the training code paths)."""

    def __init__(self, model: Recommender) -> None:
        self.model = model.cpu().eval()
        self.codebook_sizes = tuple(model.codebook_sizes)
        self.max_history = model.max_history

    @torch.no_grad()
    def hidden(self, vectors: np.ndarray, codes: np.ndarray, padding: np.ndarray) -> np.ndarray:
        tokens = self.model.item_tokens(torch.from_numpy(vectors), torch.from_numpy(codes))
        return self.model.encode(tokens, torch.from_numpy(padding))[:, -1].numpy()

    @torch.no_grad()
    def step(self, hidden: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        b, k, num_levels = codes.shape
        flat = torch.from_numpy(np.repeat(hidden, k, axis=0))  # (B K, d)
        prefix = torch.from_numpy(np.ascontiguousarray(codes.reshape(b * k, num_levels)[:, :level]))
        return self.model.decoder_step(flat, prefix, level).numpy().reshape(b, k, -1)

    @torch.no_grad()
    def dense_scores(self, hidden: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
        query = self.model.dense_query(torch.from_numpy(hidden))
        tokens = self.model.item_tokens(torch.from_numpy(vectors), torch.from_numpy(codes))
        return (query[:, None, :] * tokens).sum(-1).numpy()


class _PairedGraphs:
    """The runner's graphs, each call also run by torch on the same inputs; records the differences."""

    def __init__(self, runner: RecommenderRunner, reference: TorchGraphs) -> None:
        self.runner = runner
        self.reference = reference
        self.codebook_sizes = runner.codebook_sizes
        self.max_history = runner.max_history
        self.hidden_diff = 0.0
        self.step_diff = 0.0
        self.dense_diff = 0.0

    def hidden(self, vectors: np.ndarray, codes: np.ndarray, padding: np.ndarray) -> np.ndarray:
        got = self.runner.hidden(vectors, codes, padding)
        want = self.reference.hidden(vectors, codes, padding)
        self.hidden_diff = max(self.hidden_diff, float(np.abs(got - want).max()))
        return got

    def step(self, hidden: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        got = self.runner.step(hidden, codes, level)
        self.step_diff = max(self.step_diff, float(np.abs(got - self.reference.step(hidden, codes, level)).max()))
        return got

    def dense_scores(self, hidden: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
        got = self.runner.dense_scores(hidden, vectors, codes)
        want = self.reference.dense_scores(hidden, vectors, codes)
        self.dense_diff = max(self.dense_diff, float(np.abs(got - want).max()))
        return got


def check_parity(model: Recommender, runner: RecommenderRunner, histories: Sequence[History], trie: SemanticIdTrie,
                 item_vectors: Callable[[np.ndarray], np.ndarray], *, tolerance: float, beam_size: int,
                 hybrid_weight: float, exclude_history: bool, top_k: int = 10, batch_size: int = 25
                 ) -> tuple[RecommenderParity, dict[str, Recommendations]]:
    """Rank `histories` with torch and with the runner in both modes (module docstring).

    Returns the figures and the runner's rankings by mode (what the service answers for these inputs).
    """
    reference = TorchGraphs(model)
    paired = _PairedGraphs(runner, reference)
    options = {"top_k": top_k, "beam_size": beam_size, "hybrid_weight": hybrid_weight,
               "exclude_history": exclude_history}
    served: dict[str, list[Recommendations]] = {mode: [] for mode in RECOMMEND_MODES}
    mismatched: set[int] = set()
    near_ties: set[int] = set()
    for start in range(0, len(histories), batch_size):
        chunk = list(histories[start:start + batch_size])
        for mode in RECOMMEND_MODES:
            got = recommend(paired, chunk, trie, item_vectors, mode=mode, **options)
            want = recommend(reference, chunk, trie, item_vectors, mode=mode, **options)
            served[mode].append(got)

            def wide(i: int, _chunk: list[History] = chunk, _mode: str = mode
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
                # a near tie at a beam's cut-off: both rank the history again with the widest beam
                wide_options = {**options, "beam_size": max(beam_size, RECHECK_BEAM)}
                a = recommend(runner, [_chunk[i]], trie, item_vectors, mode=_mode, **wide_options)
                b = recommend(reference, [_chunk[i]], trie, item_vectors, mode=_mode, **wide_options)
                return a.rows[0], a.scores[0], b.rows[0], b.scores[0]

            ties = near_tie_agreement(got.rows, got.scores, want.rows, want.scores, tolerance, recheck=wide)
            mismatched.update(start + i for i in ties.mismatched)
            near_ties.update(start + i for i in (*ties.swapped, *ties.beam_cut))
    max_diff = max(paired.hidden_diff, paired.step_diff, paired.dense_diff)
    figures = RecommenderParity(inputs=len(histories), beam_size=beam_size, top_k=top_k, tolerance=tolerance,
                                max_abs_diff=max_diff, hidden_max_abs_diff=paired.hidden_diff,
                                dense_max_abs_diff=paired.dense_diff, top_k_identical=not mismatched,
                                near_tie_swaps=len(near_ties - mismatched), mismatched_inputs=len(mismatched))
    return figures, {mode: _concat(parts) for mode, parts in served.items()}


def _concat(parts: list[Recommendations]) -> Recommendations:
    fields = ("rows", "semantic_ids", "scores", "generative", "dense", "counts")
    return Recommendations(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields})
