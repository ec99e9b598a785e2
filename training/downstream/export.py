"""Export a serving bundle exactly as docs/bundle.md specifies, after an ONNX parity check.

For every model (indexer, retriever, recommender) two graphs are exported from the torch network:
`encoder.onnx` (input_ids, attention_mask -> encoder_states) and `decoder_step.onnx` (encoder_states,
attention_mask, codes (B, W, L), level () -> log_probs (B, W, V)). Each model is then checked on
`parity_inputs` texts (100 by default) through `bundle.OnnxRunner`, the runner the service serves with
(the bundle's tokenizer.json, onnxruntime, the same grouping of beams): the constrained beam search
(beam 20, top 10) is run once with the torch model and once with the runner; at every step of the
runner's search the torch log-probabilities of the same prefixes are computed too, and their largest
absolute difference over the meaningful codes must be <= `tolerance` (1e-4), the top-10 IDs of the two
searches must agree, and the bundle's tokenizer must give the token ids training's gave. The
figures go into the model's manifest entry (`parity`, `bundle.ParityFigures`).

Near ties (issue 18): the two searches run on scores that differ in the last bits, so two results
whose scores differ by less than `tolerance` may swap places (`bundle.rankings_agree`, the rule of the
recommender's check too). A near tie at a beam's cut-off (the 20th and 21st prefixes of a level)
can change which prefixes the two searches keep and so the results below them; an input whose
rankings differ beyond swapped near ties is therefore searched again by both with a beam of
`RECHECK_BEAM` (100, the widest the service allows), which keeps both sides of such a cut, and counts
as a mismatch only when those rankings differ too. A real difference of the graphs shows in
`max_abs_diff` (torch is run on every prefix the runner scored) and in the rankings, and refuses the
bundle.

The indexer may also get `indexer/encoder.int8.onnx`, a dynamically quantised (int8 weights) copy
of its encoder for the service's POST /index-documents (about twice the documents/s on a CPU with
VNNI). It cannot pass the fp32 rule, so it has its own: on the indexer's parity inputs, the greedy
codes through the int8 encoder (same decoder_step graph) must equal those through the fp32 encoder
for at least `indexer_int8_min_agreement` of the inputs (whole learned prefix); per-level and prefix
agreement go into the manifest (`models.indexer.int8_encoder.agreement`), and a graph below the minimum
is not written (`models.indexer.int8_encoder.skipped` says why).

The documents' text vectors (`vectors/item_vectors.npy`, the manifest's `item_vectors`) are written
whenever the bundle has a retriever or a recommender: the recommender reads them as item tokens and
the retriever's hybrid search scores documents by them. They come from the recommender (the vectors
it was trained with), or from the caller (`DocumentVectors`: `lmindexer export` encodes the documents
with the ID source's encoder, as the recommender would), else from the indexer network's encoder,
mean-pooled. The export checks that the service can make them for new documents and queries: through
the indexer's encoder.onnx, mean-pooled (source "indexer"), else through a text encoder graph of the
encoder that made them (source "text_encoder"); max |diff| <= `tolerance` on up to 200 documents.

The retriever's search modes (`models.retriever.search`) are its `BundleModel.search`: the default mode
and hybrid weight chosen on its validation split by `training.downstream.experiment.evaluate_task`
(`search_settings`), else generative with weight 0.5, chosen on no data (`chosen_on` null).

The bundle is built in a hidden staging directory beside `out_dir` and renamed into place only
when everything, parity included, succeeded: a failed export leaves nothing at `out_dir`.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from bundle import (
    FORMAT_VERSION,
    RECHECK_BEAM,
    RECOMMEND_MODES,
    BundleManifest,
    History,
    Int8Encoder,
    ItemTokenRecommenderEntry,
    OnnxRunner,
    ParityFigures,
    RecommenderRunner,
    SearchSettings,
    SemanticIdSpec,
    TextModelEntry,
    TextTokenizer,
    TextVectorRunner,
    TextVectorSpec,
    grouped_step_fn,
    mean_pooled,
    near_tie_agreement,
    recommender_item_vectors,
    write_documents,
    write_manifest,
)
from training.baselines.recommendation import RecData
from training.data.amazon import items_as_documents
from training.data.corpus import Document
from training.downstream.cold_start import greedy_codes
from training.downstream.evaluate import Decoded, TorchModel, beam_search
from training.encoder import load_encoder, mean_pool, resolve_encoder_path
from training.errors import UserInputError
from training.indexing.learning import staging_directory
from training.indexing.network import SemanticIdNetwork
from training.recommendation import export as recommender_export
from training.recommendation.data import load_dataset
from training.recommendation.items import network_encoder_folder
from training.recommendation.model import Recommender
from training.recommendation.run import evaluate_model, load_model
from trie import SemanticIdTrie, constrained_beam_search

logger = logging.getLogger(__name__)

OPSET = 17
INT8_ENCODER = "encoder.int8.onnx"
# Only the MatMul weights are quantised: they are the encoder's compute. Quantising the embedding tables
# (Gather, onnxruntime's default too) saves no time and costs agreement: a `build-demo --preset tiny`
# MiniLM indexer, prefix agreement 0.865 with Gather quantised vs 0.912 without; benchmark bundle
# 0.917 vs 0.927; the same documents/s.
INT8_OPS = ("MatMul",)


class ParityError(UserInputError):
    """The ONNX graphs do not reproduce the torch model; the bundle is not written."""

    exit_status = 3


# The retriever's search modes when none were chosen on a development split: generative by default, and an even
# mix for a client that asks for hybrid (recorded with chosen_on null).
UNCHOSEN_SEARCH = SearchSettings(default_mode="generative", hybrid_weight=0.5, dense_candidates=100, chosen_on=None)


@dataclass(frozen=True)
class BundleModel:
    """One model of the bundle: the torch network, the texts its parity is checked on, and the input
    settings it was trained with (they go into its manifest entry, and the service reads inputs so).
    ``search``: the retriever's search modes (``training.downstream.experiment.search_settings`` of its
    evaluation); None: ``UNCHOSEN_SEARCH``."""

    network: SemanticIdNetwork
    parity_inputs: Sequence[str]
    max_length: int  # tokens of its input text, [CLS] and [SEP] included
    beam_size: int = 20  # the beam width of its evaluation; the parity check decodes with it
    search: SearchSettings | None = None


@dataclass(frozen=True)
class DocumentVectors:
    """The documents' text vectors a bundle carries (its `item_vectors`) and the encoder that made them.

    vectors (N, D) float32, row i = documents[i]; `encoder`: a loadable encoder (name or folder), exported as
    the bundle's text encoder when the indexer's encoder does not give these vectors; `max_length`: the tokens
    it read; `description`: what the manifest says made them.
    """

    vectors: np.ndarray
    encoder: str
    max_length: int
    description: str
    tolerance: float = 1e-3  # max |diff| of the service's path (indexer or text encoder) to these vectors


@dataclass(frozen=True)
class RecommenderModel:
    """The item-token recommender of a bundle (training/recommendation) and what its entry records.

    vectors (N, D) float32: the text vectors it was trained with, in the bundle's document order
    (row i = documents[i]); the service's vectors of new items must match them (checked through the
    indexer's encoder, ``text_vector_tolerance``). parity_histories: document rows, oldest first.
    """

    model: Recommender
    vectors: np.ndarray
    parity_histories: Sequence[np.ndarray]
    beam_size: int
    default_mode: str
    hybrid_weight: float
    exclude_history: bool
    text_encoder: str  # the encoder training's text vectors came from (a description)
    text_max_length: int
    text_vector_tolerance: float = 1e-3


class _Encoder(nn.Module):
    def __init__(self, inner: SemanticIdNetwork) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner.encode(input_ids, attention_mask)


class _DecoderStep(nn.Module):
    def __init__(self, inner: SemanticIdNetwork) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor, codes: torch.Tensor,
                level: torch.Tensor) -> torch.Tensor:
        return self.inner.decoder_step(encoder_states, attention_mask, codes, level)


@torch.no_grad()
def export_onnx(network: SemanticIdNetwork, directory: Path) -> dict[str, str]:
    """Write directory/encoder.onnx and directory/decoder_step.onnx (docs/bundle.md signatures)."""
    directory.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
    # Tracing turns shape arithmetic and constant tensors into graph constants and says so (TracerWarning,
    # a dozen per export, from our modules and transformers'): a wrongly frozen value would show as a
    # mismatch in `check_parity` (run on every export), the check that matters; the warnings only add noise.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    num_levels = network.config.num_levels
    input_ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2178, 102, 0, 0, 0]])  # (2, 6)
    attention_mask = (input_ids != 0).long()
    # eval() on the wrappers: torch.onnx.export restores the wrapper's training flag recursively.
    encoder = _Encoder(network).eval()
    torch.onnx.export(
        encoder, (input_ids, attention_mask), str(directory / "encoder.onnx"),
        input_names=["input_ids", "attention_mask"], output_names=["encoder_states"],
        dynamic_axes={"input_ids": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                      "encoder_states": {0: "B", 1: "S"}},
        dynamo=False, opset_version=OPSET,
    )
    states = network.encode(input_ids, attention_mask)  # (2, 6, d)
    codes = torch.zeros(2, 3, num_levels, dtype=torch.long)  # (B, W, L)
    step = _DecoderStep(network).eval()
    torch.onnx.export(
        step, (states, attention_mask, codes, torch.tensor(min(1, num_levels), dtype=torch.long)),
        str(directory / "decoder_step.onnx"),
        input_names=["encoder_states", "attention_mask", "codes", "level"], output_names=["log_probs"],
        dynamic_axes={"encoder_states": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                      "codes": {0: "B", 1: "W"}, "log_probs": {0: "B", 1: "W"}},
        dynamo=False, opset_version=OPSET,
    )
    network.eval()
    return {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}


def check_parity(torch_model: TorchModel, runner: OnnxRunner, texts: Sequence[str], trie: SemanticIdTrie,
                 tolerance: float, beam_size: int = 20, top_k: int = 10,
                 batch_size: int = 25) -> tuple[ParityFigures, Decoded]:
    """Compare the runner with torch on `texts` (see the module docstring).

    Returns the figures and the runner's decode (top_k IDs per text: semantic IDs (len(texts), top_k, L + 1),
    summed log-probabilities, trie rows, counts), what the service's beam search gives for these inputs.
    """
    sizes = runner.codebook_sizes
    max_diff = 0.0
    encoder_diff = 0.0
    tokens_identical = True
    onnx_ids, onnx_parts = [], []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        ids, mask = runner.tokenizer.encode(chunk)
        torch_ids, torch_mask = torch_model.tokenize(chunk)
        tokens_identical &= bool(np.array_equal(ids, torch_ids) and np.array_equal(mask, torch_mask))
        encoded = runner.encode_ids(ids, mask)
        torch_states = torch_model.encode_ids(ids, mask)  # (B, S, d)
        encoder_diff = max(encoder_diff, float(np.abs(torch_states - encoded.states).max()))
        served = runner.query_step(encoded)

        def paired_step(queries: np.ndarray, codes: np.ndarray, level: int, _torch: np.ndarray = torch_states,
                        _mask: np.ndarray = mask, _served: Any = served) -> np.ndarray:
            nonlocal max_diff
            got = _served(queries, codes, level)  # (B, W, K_level)
            want = torch_model.decoder_step(_torch[queries], _mask[queries], codes, level)[..., : sizes[level]]
            max_diff = max(max_diff, float(np.abs(got - want).max()))
            return got

        result = constrained_beam_search(grouped_step_fn(paired_step, sizes), trie, num_queries=len(chunk),
                                         beam_size=beam_size, top_k=top_k)
        onnx_ids.append(result.semantic_ids)
        onnx_parts.append(result)
    reference = beam_search(torch_model, list(texts), trie, beam_size=beam_size, top_k=top_k, batch_size=batch_size)

    def joined(name: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in onnx_parts]) if onnx_parts else empty

    onnx_all = np.concatenate(onnx_ids) if onnx_ids else np.zeros_like(reference.semantic_ids)
    rows = joined("rows", np.zeros_like(reference.rows))
    scores = joined("scores", np.zeros_like(reference.scores))
    ties = near_tie_agreement(rows, scores, reference.rows, reference.scores, tolerance,
                              recheck=lambda i: _wide_rankings(torch_model, runner, texts[i], trie, top_k))
    figures = ParityFigures(inputs=len(texts), beam_size=beam_size, top_k=top_k, tolerance=tolerance,
                            max_abs_diff=max_diff, encoder_max_abs_diff=encoder_diff,
                            tokens_identical=tokens_identical, top_k_identical=not ties.mismatched,
                            mismatched_inputs=len(ties.mismatched))
    if ties.swapped or ties.beam_cut:
        logger.info("parity: %d of %d inputs agree up to near ties (%d swapped places, %d re-searched with beam %d "
                    "after a near tie at a beam cut-off)", len(ties.swapped) + len(ties.beam_cut), len(texts),
                    len(ties.swapped), len(ties.beam_cut), RECHECK_BEAM)
    decoded = Decoded(semantic_ids=onnx_all, scores=scores, rows=rows,
                      counts=joined("counts", np.zeros(0, np.int64)), seconds=0.0)
    return figures, decoded


def _wide_rankings(torch_model: TorchModel, runner: OnnxRunner, text: str, trie: SemanticIdTrie,
                   top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, scores) of `text` searched by the runner, then by torch, with a beam of RECHECK_BEAM."""
    beam = min(RECHECK_BEAM, max(1, len(trie)))
    served = beam_search(runner, [text], trie, beam_size=beam, top_k=top_k)
    reference = beam_search(torch_model, [text], trie, beam_size=beam, top_k=top_k)
    return served.rows[0], served.scores[0], reference.rows[0], reference.scores[0]


def code_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Agreement of two (N, L) code tables: per level, and on the whole prefix (all L levels equal)."""
    equal = reference == candidate  # (N, L)
    return {"per_level": [round(float(v), 4) for v in equal.mean(axis=0)] if len(equal) else [],
            "prefix": round(float(equal.all(axis=1).mean()), 4) if len(equal) else 0.0,
            "inputs": len(equal)}


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def _without_root_logger_records() -> Iterator[None]:
    """Drop records logged on the root logger itself (not those of named loggers propagating to it).

    onnxruntime's quantiser logs a line per tensor through `logging.info()` on the root logger (hundreds for
    MiniLM) and advises a pre-processing step that fails on these graphs; none of it is actionable here.
    """
    root = logging.getLogger()
    drop = _DropAll()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def write_int8_encoder(directory: Path, texts: Sequence[str], tokenizer: TextTokenizer,
                       codebook_sizes: Sequence[int], min_prefix_agreement: float) -> Int8Encoder:
    """Quantise directory/encoder.onnx into directory/encoder.int8.onnx when its greedy codes agree enough.

    Both weight layouts are tried (one scale per output channel, and one per tensor; per channel agreed
    far better with MiniLM: 0.93-0.94 vs 0.75-0.77 prefix agreement, at the same speed); the better
    agreeing one is kept.
    Returns the entry's `int8_encoder`: the agreement always, and the file (relative to `directory`) when
    written, else why not. `texts` must not be empty. Greedy codes come from `bundle.OnnxRunner`, 25 texts
    a batch in the given order (int8 activations are quantised per batch).
    """
    def runner(encoder: str) -> OnnxRunner:
        return OnnxRunner(directory / encoder, directory / "decoder_step.onnx", tokenizer, codebook_sizes,
                          name="indexer", intra_op_threads=2)

    reference, _ = greedy_codes(runner("encoder.onnx"), texts, alternatives=1, batch_size=25)
    best: dict[str, Any] | None = None
    for per_channel in (True, False):
        candidate = directory / f".encoder.int8.per_channel-{per_channel}.onnx"
        with _without_root_logger_records():
            quantize_dynamic(directory / "encoder.onnx", candidate, weight_type=QuantType.QInt8,
                             per_channel=per_channel, op_types_to_quantize=list(INT8_OPS))
        codes, _ = greedy_codes(runner(candidate.name), texts, alternatives=1, batch_size=25)
        figures = {**code_agreement(reference, codes), "per_channel": per_channel, "weight_type": "QInt8",
                   "quantized_ops": list(INT8_OPS), "min_prefix_agreement": min_prefix_agreement}
        logger.info("int8 encoder (per_channel=%s): prefix agreement %.3f, per level %s on %d inputs", per_channel,
                    figures["prefix"], figures["per_level"], figures["inputs"])
        if best is None or (figures["prefix"], sum(figures["per_level"])) > (best["prefix"], sum(best["per_level"])):
            if best is not None:
                (directory / best.pop("file")).unlink()
            best = {**figures, "file": candidate.name}
        else:
            candidate.unlink()
    assert best is not None
    candidate = directory / best.pop("file")
    if best["prefix"] < min_prefix_agreement:
        candidate.unlink()
        reason = (f"prefix agreement {best['prefix']:.4f} with the fp32 encoder is below the minimum "
                  f"{min_prefix_agreement} (indexer_int8_min_agreement)")
        logger.warning("int8 indexer encoder not written: %s", reason)
        return Int8Encoder(file=None, agreement=best, skipped=reason)
    candidate.rename(directory / INT8_ENCODER)
    return Int8Encoder(file=INT8_ENCODER, agreement=best, skipped=None)


def parity_summary(manifest: BundleManifest) -> list[str]:
    """Lines for the CLI: each model's ONNX parity figures and its input length, then the int8 encoder's."""
    lines = []
    for name, entry in manifest.models.items():
        if entry.parity is None:
            continue
        line = (f"{name}: ONNX max |diff| {entry.parity.max_abs_diff:.2e}, top-{entry.parity.top_k} agree "
                f"{entry.parity.top_k_identical}")
        if isinstance(entry, TextModelEntry):
            line += f"; inputs cut at {entry.max_input_length} tokens"
            if entry.search is not None:
                chosen = entry.search.chosen_on or "not chosen on data"
                line += (f"; search default mode {entry.search.default_mode} (hybrid weight "
                         f"{entry.search.hybrid_weight:g}, dense top-{entry.search.dense_candidates}; {chosen})")
        else:
            line += (f" ({entry.parity.near_tie_swaps} near-tie swaps); histories cut at {entry.max_history} items, "
                     f"default mode {entry.default_mode} (hybrid weight {entry.hybrid_weight:g})")
        lines.append(line)
    vectors = manifest.item_vectors
    if vectors is not None:
        lines.append(f"item vectors: {manifest.num_documents} x {vectors.dim}, made for new documents and queries by "
                     f"the {'indexer encoder' if vectors.source == 'indexer' else 'bundle text encoder'}, max |diff| "
                     f"{vectors.max_abs_diff:.1e} on {vectors.checked_items} documents")
    return [*lines, int8_summary(manifest)]


def int8_summary(manifest: BundleManifest) -> str:
    """One line on the indexer's int8 encoder of a manifest: written or not, and its agreement."""
    entry = manifest.models["indexer"]
    int8 = entry.int8_encoder if isinstance(entry, TextModelEntry) else None
    if int8 is None or int8.agreement is None:
        return f"indexer int8 encoder: not written ({int8.skipped if int8 else 'not measured'})"
    agreement = int8.agreement
    state = "written" if int8.file is not None else f"not written: {int8.skipped}"
    return (f"indexer int8 encoder: prefix agreement {agreement['prefix']:.3f} (per level {agreement['per_level']}) "
            f"on {agreement['inputs']} inputs, {state}")


def document_metadata(document: Document) -> dict[str, Any]:
    """A document's metadata in documents.jsonl: its metadata, category included."""
    metadata = dict(document.metadata)
    if document.category is not None:
        metadata.setdefault("category", document.category)
    return metadata


def export_bundle(
    out_dir: Path,
    models: Mapping[str, BundleModel],
    documents: Sequence[Document],
    semantic_ids: np.ndarray,
    tokenizer: Any,
    encoder: str,
    evaluation: Mapping[str, Mapping[str, Any]] | None = None,
    training_config: Mapping[str, Any] | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
    indexer_int8: bool = True,
    indexer_int8_min_agreement: float = 0.9,
    recommender: RecommenderModel | None = None,
    item_vectors: DocumentVectors | None = None,
) -> BundleManifest:
    """Write the bundle (docs/bundle.md) to `out_dir`; returns its manifest.

    models: the text models, "indexer" (required) and "retriever"; `recommender`: the item-token
    recommender. A bundle needs a retriever or a recommender. The text networks must share num_levels
    and codebook_size with the IDs, the retriever its counter size too (the indexer's counter head is
    not used by the service). Each model's input settings (max_length, beam_size) go into its entry.
    documents and semantic_ids (N, L + 1): row i = trie row i = documents.jsonl line i.
    tokenizer: the Hugging Face tokenizer used for training; `encoder` names the folder whose
    tokenizer.json is copied into the bundle (the parity check requires both to give the same tokens).
    evaluation: each model's evaluation figures by role.
    indexer_int8: also write the indexer's int8 encoder when its greedy codes agree with the fp32
    encoder's on at least `indexer_int8_min_agreement` of the indexer's parity inputs (module docstring).
    item_vectors: the documents' text vectors (module docstring); with a recommender, its own (giving others
    is an error); None without one: the indexer network's encoder, mean-pooled and normalised.
    Raises ParityError (nothing written) when a model fails parity, or when neither the indexer's encoder,
    mean-pooled, nor the text encoder graph gives the documents' text vectors.
    """
    if "indexer" not in models:
        raise UserInputError("a bundle needs the indexer model")
    if "retriever" not in models and recommender is None:
        raise UserInputError("a bundle needs a retriever or a recommender model")
    unknown = set(models) - {"indexer", "retriever"}
    if unknown:
        raise UserInputError(f"unknown text model names {sorted(unknown)}; expected indexer, retriever")
    semantic_ids = np.asarray(semantic_ids, dtype=np.int64)
    if semantic_ids.shape[0] != len(documents):
        raise UserInputError(f"{semantic_ids.shape[0]} IDs for {len(documents)} documents")
    if recommender is not None:
        codebook_sizes = list(recommender.model.codebook_sizes)
        if recommender.vectors.shape[0] != len(documents):
            raise UserInputError(f"{recommender.vectors.shape[0]} recommender item vectors for {len(documents)} "
                                 "documents")
        if recommender.default_mode not in RECOMMEND_MODES:
            raise UserInputError(f"default_mode {recommender.default_mode!r} is not one of {list(RECOMMEND_MODES)}")
    else:
        codebook_sizes = list(models["retriever"].network.config.codebook_sizes)
    num_levels = len(codebook_sizes) - 1
    for name, model in models.items():
        config = model.network.config
        if config.num_levels != num_levels or any(k != config.codebook_size for k in codebook_sizes[:-1]):
            raise UserInputError(f"model {name}: L={config.num_levels} K={config.codebook_size} differs from the "
                                 f"IDs' codebook sizes {codebook_sizes}")
        # The retriever's counter head must cover every counter the trie may hold (new documents get counters
        # up to the IDs' counter size, which the recommender's item tokens fix when there is one).
        if name == "retriever" and (config.counter_size < codebook_sizes[-1]
                                    or (recommender is None and config.counter_size != codebook_sizes[-1])):
            raise UserInputError(f"model {name}: counter size {config.counter_size} does not fit the IDs' "
                                 f"{codebook_sizes[-1]}")
    if semantic_ids.shape[1] != num_levels + 1:
        raise UserInputError(f"IDs have {semantic_ids.shape[1]} codes, the models {num_levels + 1}")
    if not indexer_int8_min_agreement >= 0:
        raise UserInputError(f"indexer_int8_min_agreement must be >= 0, got {indexer_int8_min_agreement}")
    trie = SemanticIdTrie.build(semantic_ids, codebook_sizes=codebook_sizes)  # raises on invalid / duplicate IDs
    evaluation = evaluation or {}
    if recommender is not None:
        own = DocumentVectors(np.asarray(recommender.vectors, dtype=np.float32), recommender.text_encoder,
                              recommender.text_max_length, recommender.text_encoder, recommender.text_vector_tolerance)
        if item_vectors is not None and not np.array_equal(np.asarray(item_vectors.vectors, dtype=np.float32),
                                                           own.vectors):
            raise UserInputError("item_vectors differ from the recommender's text vectors: a bundle holds one text "
                                 "vector per document")
        item_vectors = own
    elif item_vectors is None:
        item_vectors = indexer_vectors(models["indexer"], tokenizer, documents)
    if item_vectors.vectors.shape[0] != len(documents):
        raise UserInputError(f"{item_vectors.vectors.shape[0]} item vectors for {len(documents)} documents")

    with staging_directory(Path(out_dir), overwrite=overwrite) as stage:
        stage.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        shutil.copyfile(resolve_encoder_path(encoder) / "tokenizer.json", stage / "tokenizer.json")
        entries: dict[str, TextModelEntry | ItemTokenRecommenderEntry] = {}
        for name in ("indexer", "retriever"):
            if name not in models:
                continue
            model = models[name]
            logger.info("exporting %s to ONNX", name)
            files = export_onnx(model.network, stage / name)
            torch_model = TorchModel(model.network, tokenizer, model.max_length, device="cpu")
            runner = OnnxRunner(stage / name / files["encoder"], stage / name / files["decoder_step"],
                                TextTokenizer(stage / "tokenizer.json", model.max_length), codebook_sizes,
                                name=name, intra_op_threads=2)
            figures, _ = check_parity(torch_model, runner, list(model.parity_inputs), trie, tolerance,
                                      beam_size=model.beam_size)
            logger.info("%s parity: max |diff| %.2e, top-10 agree %s, tokens identical %s on %d inputs", name,
                        figures.max_abs_diff, figures.top_k_identical, figures.tokens_identical, figures.inputs)
            if not (figures.max_abs_diff <= tolerance and figures.top_k_identical and figures.tokens_identical):
                raise ParityError(f"model {name} fails ONNX parity: max |diff| {figures.max_abs_diff:.3e} "
                                  f"(tolerance {tolerance:.0e}), top-10 agree: {figures.top_k_identical} "
                                  f"({figures.mismatched_inputs} of {figures.inputs} inputs differ beyond near "
                                  f"ties), bundle "
                                  f"tokenizer gives training's tokens: {figures.tokens_identical}; no bundle written")
            entries[name] = TextModelEntry(
                kind="text_to_id", encoder=f"{name}/{files['encoder']}", decoder_step=f"{name}/{files['decoder_step']}",
                hidden_size=int(model.network.hidden_size), max_input_length=int(model.max_length),
                pooling="cross_attention", beam_size=model.beam_size, int8_encoder=None,
                search=(model.search or UNCHOSEN_SEARCH) if name == "retriever" else None,
                parity=figures, evaluation=dict(evaluation.get(name, {})))
        # The fp32 graphs all passed parity; the int8 indexer encoder is an extra, with its own rule.
        indexer = models["indexer"]
        if not indexer_int8:
            int8 = Int8Encoder(file=None, agreement=None, skipped="disabled by the export setting indexer_int8")
        elif not indexer.parity_inputs:
            int8 = Int8Encoder(file=None, agreement=None, skipped="no parity inputs to measure its agreement on")
        else:
            int8 = write_int8_encoder(stage / "indexer", list(indexer.parity_inputs),
                                      TextTokenizer(stage / "tokenizer.json", indexer.max_length), codebook_sizes,
                                      indexer_int8_min_agreement)
            if int8.file is not None:
                int8 = replace(int8, file=f"indexer/{int8.file}")
        entries["indexer"] = replace(entries["indexer"], int8_encoder=int8)
        vector_spec = export_item_vectors(stage, item_vectors, documents, trie, models["indexer"].max_length)
        if recommender is not None:
            entries["recommender"] = export_recommender(stage, recommender, trie, tolerance,
                                                        dict(evaluation.get("recommender", {})))
        trie.save(stage / "trie.bin")
        write_documents(stage / "documents.jsonl",
                        ((d.doc_id, d.text, document_metadata(d), semantic_id)
                         for d, semantic_id in zip(documents, semantic_ids, strict=True)))
        manifest = BundleManifest(
            format_version=FORMAT_VERSION,
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            semantic_ids=SemanticIdSpec(num_levels=num_levels, codebook_size_per_level=tuple(codebook_sizes[:-1]),
                                        counter_size=codebook_sizes[-1]),
            tokenizer="tokenizer.json", trie="trie.bin", documents="documents.jsonl", num_documents=len(documents),
            index_version=0, item_vectors=vector_spec, models=entries, training_config=dict(training_config or {}))
        # Read back as the service will: the written manifest must parse strictly.
        BundleManifest.from_json(manifest.to_json())
        write_manifest(stage, manifest)
    logger.info("wrote bundle %s (%d documents, models %s)", out_dir, len(documents), ", ".join(entries))
    return manifest


def export_recommender(stage: Path, recommender: RecommenderModel, trie: SemanticIdTrie, tolerance: float,
                       evaluation: Mapping[str, Any]) -> ItemTokenRecommenderEntry:
    """Write the recommender's graphs into the staging bundle, check them, and return its entry.

    The ONNX graphs are checked against the torch model (`training.recommendation.export.check_parity`:
    max |diff| <= tolerance, identical top-10 up to near ties, both modes); a failure raises ParityError. Its
    item vectors are the bundle's (`export_item_vectors`, checked there).
    """
    model = recommender.model.cpu().eval()
    directory = stage / "recommender"
    vectors = np.ascontiguousarray(recommender.vectors, dtype=np.float32)  # (N, D)
    files = recommender_export.export_onnx(model, directory, int(vectors.shape[1]))
    offsets_file, offsets = None, None
    moved = recommender_export.item_id_offsets(model, len(vectors))  # item ID embeddings as (N, D) text offsets
    if moved is not None:
        offsets, error = moved
        if error > tolerance:
            raise ParityError(f"the recommender's item ID embeddings do not move into the text vectors' space: max "
                              f"|diff| {error:.2e} (tolerance {tolerance:.0e}); no bundle written")
        offsets_file = "recommender/item_id_offsets.npy"
        np.save(stage / offsets_file, offsets)
    graph_vectors = recommender_item_vectors(lambda rows: vectors[rows], offsets)  # what the service reads
    runner = RecommenderRunner(directory / files["sequence_model"], directory / files["decoder_step"],
                               directory / files["dense_head"], trie.codebook_sizes, model.max_history,
                               intra_op_threads=2)
    histories = [History(graph_vectors(np.asarray(rows, dtype=np.int64)),
                         trie.semantic_ids_of(np.asarray(rows, dtype=np.int64)))
                 for rows in recommender.parity_histories]
    figures, _ = recommender_export.check_parity(
        model, runner, histories, trie, graph_vectors, tolerance=tolerance,
        beam_size=recommender.beam_size, hybrid_weight=recommender.hybrid_weight,
        exclude_history=recommender.exclude_history)
    logger.info("recommender parity: max |diff| %.2e, top-10 agree %s (%d near-tie swaps, %d mismatches) on %d "
                "histories", figures.max_abs_diff, figures.top_k_identical, figures.near_tie_swaps,
                figures.mismatched_inputs, figures.inputs)
    if not (figures.max_abs_diff <= tolerance and figures.top_k_identical):
        raise ParityError(f"the recommender fails ONNX parity: max |diff| {figures.max_abs_diff:.3e} (tolerance "
                          f"{tolerance:.0e}), {figures.mismatched_inputs} of {figures.inputs} histories rank "
                          "differently beyond near ties; no bundle written")
    return ItemTokenRecommenderEntry(
        kind="item_token_recommender", sequence_model=f"recommender/{files['sequence_model']}",
        decoder_step=f"recommender/{files['decoder_step']}", dense_head=f"recommender/{files['dense_head']}",
        hidden_size=int(model.settings.d_model), max_history=int(model.max_history),
        beam_size=int(recommender.beam_size), default_mode=recommender.default_mode,  # type: ignore[arg-type]
        hybrid_weight=float(recommender.hybrid_weight), exclude_history=bool(recommender.exclude_history),
        item_id_offsets=offsets_file, parity=figures, evaluation=dict(evaluation))


VECTOR_CHECK_ITEMS = 200  # documents on which the service's path to the item vectors is checked


def export_item_vectors(stage: Path, vectors: DocumentVectors, documents: Sequence[Document], trie: SemanticIdTrie,
                        indexer_length: int) -> TextVectorSpec:
    """Write the documents' text vectors (`vectors/item_vectors.npy`) into the staging bundle, choose and check
    how the service makes them for new documents and queries, and return the manifest's `item_vectors`.

    The indexer's encoder.onnx, mean-pooled and normalised (source "indexer"), when it gives the vectors within
    `vectors.tolerance` on up to `VECTOR_CHECK_ITEMS` documents spread over the collection (LMIndexer IDs: the
    indexer network's encoder made them); else a text encoder graph of `vectors.encoder` (source
    "text_encoder", `vectors/text_encoder.onnx` and its tokenizer), checked the same way. Neither: ParityError.
    """
    directory = stage / "vectors"
    directory.mkdir(parents=True, exist_ok=True)
    matrix = np.ascontiguousarray(vectors.vectors, dtype=np.float32)
    np.save(directory / "item_vectors.npy", matrix)
    count = min(VECTOR_CHECK_ITEMS, len(documents))
    items = sorted({int(i) for i in np.linspace(0, len(documents) - 1, count)}) if count else []
    texts = [documents[i].text for i in items]
    indexer = OnnxRunner(stage / "indexer" / "encoder.onnx", stage / "indexer" / "decoder_step.onnx",
                         TextTokenizer(stage / "tokenizer.json", indexer_length), trie.codebook_sizes,
                         name="indexer", intra_op_threads=2)
    vector_diff = _vector_diff(lambda chunk: mean_pooled(*_encoded(indexer, chunk)), texts, matrix[items])
    logger.info("item vectors through the indexer encoder: max |diff| %.2e on %d documents", vector_diff, len(items))
    source, text_files = "indexer", (None, None)
    if not vector_diff <= vectors.tolerance:
        logger.info("the indexer's encoder does not make the item vectors; exporting %s as the bundle's text "
                    "encoder", vectors.encoder)
        text_files = export_text_encoder(_encoder_folder(vectors.encoder), directory)
        runner_text = TextVectorRunner(directory / "text_encoder.onnx",
                                       TextTokenizer(directory / "tokenizer.json", vectors.max_length),
                                       intra_op_threads=2)
        vector_diff = _vector_diff(runner_text.vectors, texts, matrix[items])
        source = "text_encoder"
        logger.info("item vectors through the text encoder: max |diff| %.2e", vector_diff)
    if not vector_diff <= vectors.tolerance:
        raise ParityError(f"the bundle's text encoder does not give the documents' text vectors (max |diff| "
                          f"{vector_diff:.3e} > {vectors.tolerance:g} on {len(items)} documents; they came from "
                          f"{vectors.description}): new documents and queries would read differently; no bundle "
                          "written")
    text_length = indexer_length if source == "indexer" else vectors.max_length
    return TextVectorSpec(file="vectors/item_vectors.npy", dim=int(matrix.shape[1]), encoder=vectors.description,
                          max_input_length=int(text_length), pooling="mean", normalized=True,
                          source=source,  # type: ignore[arg-type]
                          text_encoder_file=text_files[0], tokenizer_file=text_files[1], checked_items=len(items),
                          max_abs_diff=vector_diff)


def indexer_vectors(indexer: BundleModel, tokenizer: Any, documents: Sequence[Document],
                    batch_size: int = 32) -> DocumentVectors:
    """The documents' text vectors from the indexer network's encoder (torch), mean-pooled over the real tokens and
    L2-normalised at the indexer's input length: what the service computes for a new document with the bundle's
    indexer encoder (source "indexer"). For a bundle without a recommender when the caller gives none."""
    model = TorchModel(indexer.network, tokenizer, indexer.max_length, device="cpu")
    texts = [d.text for d in documents]
    out = np.zeros((len(texts), int(indexer.network.hidden_size)), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        encoded = model.encode([texts[i] for i in chunk])
        out[chunk] = mean_pooled(encoded.states, encoded.attention_mask)
    return DocumentVectors(out, encoder=str(indexer.network.config.encoder), max_length=indexer.max_length,
                           description="the indexer network's encoder")


def choose_default_mode(metrics: Mapping[str, Any]) -> str:
    """The ranking with the better validation NDCG@10 in a recommender's eval/metrics.json (generative on a tie)."""
    valid = metrics["valid"]["all"]
    return "hybrid" if valid["hybrid"]["ndcg@10"] > valid["generative"]["ndcg@10"] else "generative"


def load_recommender(model_dir: Path, parity_inputs: int, seed: int = 0
                     ) -> tuple[list[Document], np.ndarray, RecommenderModel, dict[str, Any], dict[str, Any]]:
    """What a bundle takes from a `lmindexer finetune --task recommendation` output.

    Returns the documents (its items, in catalogue order, rendered as training rendered them), their IDs
    (N, L + 1), the RecommenderModel (the default mode and hybrid weight from its validation figures,
    eval/metrics.json, computed on validation first when missing; parity histories: a seeded sample of
    its test users' histories), the evaluation figures, and the model's record.
    """
    model_dir = Path(model_dir)
    record, settings, model, catalogue = load_model(model_dir)
    metrics_path = model_dir / "eval" / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    else:
        logger.info("%s has no eval/metrics.json: evaluating on validation to choose the ranking mode", model_dir)
        metrics = evaluate_model(model_dir, splits=("valid",))
    dataset = load_dataset(Path(record["items_path"]), Path(record["sequences_path"]))
    documents = items_as_documents(dataset)
    if tuple(d.doc_id for d in documents) != catalogue.doc_ids:
        raise UserInputError(f"{model_dir}: the items file {record['items_path']} no longer matches the saved "
                             "catalogue")
    histories = RecData.from_dataset(dataset).test_histories
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(histories), size=min(parity_inputs, len(histories)), replace=False)
    recommender = RecommenderModel(
        model=model, vectors=catalogue.vectors, parity_histories=[histories[i] - 1 for i in sorted(picked)],
        beam_size=settings.beam_size, default_mode=choose_default_mode(metrics),
        hybrid_weight=float(metrics["hybrid_weight"]), exclude_history=settings.exclude_history,
        text_encoder=str(record["text_encoder"].get("encoder")),
        text_max_length=int(record["text_encoder"].get("max_length", 0)))
    return documents, catalogue.semantic_ids, recommender, metrics, record


def _encoded(runner: OnnxRunner, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = runner.encode(texts)
    return encoded.states, encoded.attention_mask


def _vector_diff(make: Any, texts: Sequence[str], want: np.ndarray, chunk: int = 25) -> float:
    """Largest |difference| between make(texts chunk) -> (n, D) and the expected vectors (N, D)."""
    diff = 0.0
    for start in range(0, len(texts), chunk):
        got = make(list(texts[start:start + chunk]))
        diff = max(diff, float(np.abs(got - want[start:start + chunk]).max()))
    return diff


class _TextVectors(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, D)
        return F.normalize(mean_pool(states, attention_mask), dim=-1)  # (B, D), as training's text vectors


@torch.no_grad()
def _encoder_folder(encoder: str) -> str:
    """A text encoder as a Hugging Face folder: an LMIndexer network folder (the recommender read the vectors
    learn-ids stored, `training.recommendation.items.text_vectors`) becomes its encoder's folder."""
    if (Path(encoder) / "network.json").is_file():
        return str(network_encoder_folder(Path(encoder)))
    return encoder


def export_text_encoder(encoder: str, directory: Path) -> tuple[str, str]:
    """Write directory/text_encoder.onnx (input_ids, attention_mask (B, S) int64 -> vectors (B, D), mean-pooled
    and L2-normalised) and directory/tokenizer.json of `encoder`; returns both paths relative to the bundle."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    model = _TextVectors(load_encoder(encoder).cpu().eval()).eval()
    input_ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2178, 102, 0, 0, 0]])  # (2, 6)
    torch.onnx.export(model, (input_ids, (input_ids != 0).long()), str(directory / "text_encoder.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["vectors"],
                      dynamic_axes={"input_ids": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                                    "vectors": {0: "B"}},
                      dynamo=False, opset_version=OPSET)
    shutil.copyfile(resolve_encoder_path(encoder) / "tokenizer.json", directory / "tokenizer.json")
    return f"{directory.name}/text_encoder.onnx", f"{directory.name}/tokenizer.json"
