"""Export a serving bundle exactly as docs/bundle.md specifies, after an ONNX parity check.

For every model (indexer, retriever, recommender) two graphs are exported from the torch network:
`encoder.onnx` (input_ids, attention_mask -> encoder_states) and `decoder_step.onnx` (encoder_states,
attention_mask, codes (B, W, L), level () -> log_probs (B, W, V)). Each model is then checked on
`parity_inputs` texts (100 by default): the constrained beam search (beam 20, top 10) is run once
with the torch decoder step and once with onnxruntime; at every step of the onnxruntime search
the torch log-probabilities of the same prefixes are computed too, and their largest absolute
difference over the meaningful codes must be <= `tolerance` (1e-4), and the top-10 IDs of the two
searches must be identical. The measured figures go into `manifest.json` under `onnx_parity`.

The indexer may also get `indexer/encoder.int8.onnx`, a dynamically quantised (int8 weights) copy
of its encoder for the service's POST /index-documents (about twice the documents/s on a CPU with
VNNI). It cannot pass the fp32 rule, so it has its own: on the indexer's parity inputs, the greedy
codes through the int8 encoder (same decoder_step graph) must equal those through the fp32 encoder
for at least `indexer_int8_min_agreement` of the inputs (whole learned prefix); per-level and prefix
agreement go into the manifest (`models.indexer.int8_agreement`), and a graph below the minimum is
not written (`models.indexer.int8_skipped` says why).

The bundle is built in a hidden staging directory beside `out_dir` and renamed into place only
when everything, parity included, succeeded: a failed export leaves nothing at `out_dir`.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data.corpus import Document
from training.downstream.cold_start import greedy_codes
from training.downstream.evaluate import TorchModel, beam_search, grouped_step_fn
from training.encoder import resolve_encoder_path
from training.errors import UserInputError
from training.indexing.network import SemanticIdNetwork

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_NAMES = ("indexer", "retriever", "recommender")
OPSET = 17
INT8_ENCODER = "encoder.int8.onnx"
# Only the MatMul weights are quantised: they are the encoder's compute. Quantising the embedding tables
# (Gather, onnxruntime's default too) saves no time and costs agreement: a `build-demo --preset tiny`
# MiniLM indexer, prefix agreement 0.865 with Gather quantised vs 0.912 without; benchmark bundle
# 0.917 vs 0.927; the same documents/s.
INT8_OPS = ("MatMul",)

# texts -> (input_ids, attention_mask), both (B, S) int64, S = the batch's longest (truncated) text
Tokenize = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


class ParityError(UserInputError):
    """The ONNX graphs do not reproduce the torch model; the bundle is not written."""

    exit_status = 3


@dataclass(frozen=True)
class BundleModel:
    """One model of the bundle: the torch network and the texts its parity is checked on."""

    network: SemanticIdNetwork
    parity_inputs: Sequence[str]
    max_length: int


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


class OnnxModel:
    """The two ONNX graphs run by onnxruntime, with the TorchModel interface (numpy in and out)."""

    def __init__(self, directory: Path, tokenize: Any = None, threads: int = 2,
                 encoder_file: str = "encoder.onnx") -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = onnxruntime.InferenceSession(str(directory / encoder_file), options, providers=providers)
        self.step = onnxruntime.InferenceSession(str(directory / "decoder_step.onnx"), options, providers=providers)
        self._tokenize = tokenize

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) int64 ids and mask, by the tokenizer function given at construction."""
        if self._tokenize is None:
            raise ValueError("this OnnxModel was built without a tokenizer")
        return self._tokenize(texts)

    def encode_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, S) ids and mask -> (B, S, d) float32 encoder states."""
        return self.encoder.run(None, {"input_ids": input_ids.astype(np.int64),
                                       "attention_mask": attention_mask.astype(np.int64)})[0]

    def decoder_step(self, encoder_states: np.ndarray, attention_mask: np.ndarray, codes: np.ndarray,
                     level: int) -> np.ndarray:
        """(B, W, V) float32 log-probs of `level` for the (B, W, L) prefixes."""
        return self.step.run(None, {"encoder_states": encoder_states.astype(np.float32),
                                    "attention_mask": attention_mask.astype(np.int64),
                                    "codes": codes.astype(np.int64),
                                    "level": np.asarray(level, dtype=np.int64)})[0]


def check_parity(torch_model: TorchModel, onnx_model: OnnxModel, texts: Sequence[str], trie: Any,
                 beam_size: int = 20, top_k: int = 10, batch_size: int = 25) -> dict[str, Any]:
    """Compare onnxruntime with torch on `texts` (see the module docstring); returns the figures."""
    from trie import constrained_beam_search

    sizes = tuple(trie.codebook_sizes)
    num_levels = len(sizes) - 1
    max_diff = 0.0
    encoder_diff = 0.0
    onnx_ids = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        ids, mask = torch_model.tokenize(chunk)
        torch_states = torch_model.encode_ids(ids, mask)  # (B, S, d)
        onnx_states = onnx_model.encode_ids(ids, mask)
        encoder_diff = max(encoder_diff, float(np.abs(torch_states - onnx_states).max()))

        def paired_step(queries: np.ndarray, codes: np.ndarray, level: int,
                        _torch: np.ndarray = torch_states, _onnx: np.ndarray = onnx_states,
                        _mask: np.ndarray = mask) -> np.ndarray:
            nonlocal max_diff
            got = onnx_model.decoder_step(_onnx[queries], _mask[queries], codes, level)  # (B, W, V)
            want = torch_model.decoder_step(_torch[queries], _mask[queries], codes, level)
            size = sizes[level]
            max_diff = max(max_diff, float(np.abs(got[..., :size] - want[..., :size]).max()))
            return got

        step_fn = grouped_step_fn(paired_step, num_levels, sizes)
        result = constrained_beam_search(step_fn, trie, num_queries=len(chunk), beam_size=beam_size, top_k=top_k)
        onnx_ids.append(result.semantic_ids)
    torch_ids = beam_search(torch_model, list(texts), trie, beam_size=beam_size, top_k=top_k,
                            batch_size=batch_size).semantic_ids
    onnx_all = np.concatenate(onnx_ids) if onnx_ids else np.zeros_like(torch_ids)
    identical = bool(np.array_equal(torch_ids, onnx_all))
    mismatched = int((torch_ids != onnx_all).any(axis=(1, 2)).sum()) if torch_ids.shape == onnx_all.shape else -1
    return {"max_abs_diff": max_diff, "encoder_max_abs_diff": encoder_diff, f"top{top_k}_identical": identical,
            "mismatched_inputs": mismatched, "inputs": len(texts), "beam_size": beam_size}


def tokenize_with(tokenizer: Any, max_length: int) -> Tokenize:
    """A Hugging Face tokenizer as a Tokenize function: truncation to max_length, padding to the longest."""
    def tokenize(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    return tokenize


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


def write_int8_encoder(directory: Path, texts: Sequence[str], tokenize: Tokenize, codebook_sizes: Sequence[int],
                       min_prefix_agreement: float) -> dict[str, Any]:
    """Quantise directory/encoder.onnx into directory/encoder.int8.onnx when its greedy codes agree enough.

    Both weight layouts are tried (one scale per output channel, and one per tensor; per channel agreed
    far better with MiniLM: 0.93-0.94 vs 0.75-0.77 prefix agreement, at the same speed); the better
    agreeing one is kept.
    Returns the manifest fields of the model's entry: `int8_agreement` always, and `encoder_int8`
    (a path relative to `directory`) when written, else `int8_skipped` (why). `texts` must not be empty.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reference = greedy_codes(OnnxModel(directory, tokenize=tokenize), texts, codebook_sizes, batch_size=25)
    best: dict[str, Any] | None = None
    for per_channel in (True, False):
        candidate = directory / f".encoder.int8.per_channel-{per_channel}.onnx"
        with _without_root_logger_records():
            quantize_dynamic(directory / "encoder.onnx", candidate, weight_type=QuantType.QInt8,
                             per_channel=per_channel, op_types_to_quantize=list(INT8_OPS))
        codes = greedy_codes(OnnxModel(directory, tokenize=tokenize, encoder_file=candidate.name),
                             texts, codebook_sizes, batch_size=25)
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
        return {"int8_agreement": best, "int8_skipped": reason}
    candidate.rename(directory / INT8_ENCODER)
    return {"encoder_int8": INT8_ENCODER, "int8_agreement": best}


def int8_summary(manifest: Mapping[str, Any]) -> str:
    """One line on the indexer's int8 encoder of a manifest: written or not, and its agreement."""
    entry = manifest["models"]["indexer"]
    if "int8_agreement" not in entry:
        return f"indexer int8 encoder: not written ({entry.get('int8_skipped', 'not measured')})"
    agreement = entry["int8_agreement"]
    state = "written" if "encoder_int8" in entry else f"not written: {entry['int8_skipped']}"
    return (f"indexer int8 encoder: prefix agreement {agreement['prefix']:.3f} (per level {agreement['per_level']}) "
            f"on {agreement['inputs']} inputs, {state}")


def document_record(document: Document, semantic_id: Sequence[int]) -> dict[str, Any]:
    """One documents.jsonl line: doc_id, text, metadata (category included), semantic_id."""
    metadata = dict(document.metadata)
    if document.category is not None:
        metadata.setdefault("category", document.category)
    return {"doc_id": document.doc_id, "text": document.text, "metadata": metadata,
            "semantic_id": [int(c) for c in semantic_id]}


def export_bundle(
    out_dir: Path,
    models: Mapping[str, BundleModel],
    documents: Sequence[Document],
    semantic_ids: np.ndarray,
    tokenizer: Any,
    encoder: str,
    max_query_length: int,
    max_document_length: int,
    max_history: int = 20,
    history_separator: str = ". ",
    evaluation: Mapping[str, Any] | None = None,
    training_config: Mapping[str, Any] | None = None,
    tolerance: float = 1e-4,
    beam_size: int = 20,
    overwrite: bool = False,
    indexer_int8: bool = True,
    indexer_int8_min_agreement: float = 0.9,
) -> dict[str, Any]:
    """Write the bundle (docs/bundle.md) to `out_dir`; returns the manifest.

    models: "indexer" (required) and "retriever" / "recommender" (at least one); their networks must
    share num_levels and codebook_size, and the retriever / recommender their counter size too (the
    indexer's counter head is not used by the service).
    documents and semantic_ids (N, L + 1): row i = trie row i = documents.jsonl line i.
    tokenizer: the Hugging Face tokenizer used for parity; `encoder` names the folder whose
    tokenizer.json is copied.
    indexer_int8: also write the indexer's int8 encoder when its greedy codes agree with the fp32
    encoder's on at least `indexer_int8_min_agreement` of the indexer's parity inputs (module docstring).
    Raises ParityError (nothing written) when a model fails parity.
    """
    from training.indexing.learning import staging_directory
    from trie import SemanticIdTrie

    if "indexer" not in models:
        raise UserInputError("a bundle needs the indexer model")
    if not {"retriever", "recommender"} & models.keys():
        raise UserInputError("a bundle needs a retriever or a recommender model")
    unknown = set(models) - set(MODEL_NAMES)
    if unknown:
        raise UserInputError(f"unknown model names {sorted(unknown)}; expected {MODEL_NAMES}")
    semantic_ids = np.asarray(semantic_ids, dtype=np.int64)
    if semantic_ids.shape[0] != len(documents):
        raise UserInputError(f"{semantic_ids.shape[0]} IDs for {len(documents)} documents")
    served = [models[name].network.config for name in ("retriever", "recommender") if name in models]
    reference = served[0]
    codebook_sizes = list(reference.codebook_sizes)
    for name, model in models.items():
        config = model.network.config
        if config.num_levels != reference.num_levels or config.codebook_size != reference.codebook_size:
            raise UserInputError(f"model {name}: L={config.num_levels} K={config.codebook_size} differs from "
                                 f"L={reference.num_levels} K={reference.codebook_size}")
        if name != "indexer" and config.counter_size != reference.counter_size:
            raise UserInputError(f"model {name}: counter size {config.counter_size} differs from "
                                 f"{reference.counter_size}")
    if semantic_ids.shape[1] != reference.num_levels + 1:
        raise UserInputError(f"IDs have {semantic_ids.shape[1]} codes, the models {reference.num_levels + 1}")
    if not indexer_int8_min_agreement >= 0:
        raise UserInputError(f"indexer_int8_min_agreement must be >= 0, got {indexer_int8_min_agreement}")
    trie = SemanticIdTrie.build(semantic_ids, codebook_sizes=codebook_sizes)  # raises on invalid / duplicate IDs

    with staging_directory(Path(out_dir), overwrite=overwrite) as stage:
        stage.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        model_entries: dict[str, Any] = {}
        parity: dict[str, Any] = {}
        for name in MODEL_NAMES:
            if name not in models:
                continue
            model = models[name]
            logger.info("exporting %s to ONNX", name)
            files = export_onnx(model.network, stage / name)
            torch_model = TorchModel(model.network, tokenizer, model.max_length, device="cpu")
            onnx_model = OnnxModel(stage / name, tokenize=tokenize_with(tokenizer, model.max_length))
            figures = check_parity(torch_model, onnx_model, list(model.parity_inputs), trie, beam_size=beam_size)
            figures["tolerance"] = tolerance
            parity[name] = figures
            logger.info("%s parity: max |diff| %.2e, top-10 identical %s on %d inputs", name,
                        figures["max_abs_diff"], figures["top10_identical"], figures["inputs"])
            if not figures["max_abs_diff"] <= tolerance or not figures["top10_identical"]:
                raise ParityError(f"model {name} fails ONNX parity: max |diff| {figures['max_abs_diff']:.3e} "
                                  f"(tolerance {tolerance:.0e}), top-10 identical: {figures['top10_identical']} "
                                  f"({figures['mismatched_inputs']} of {figures['inputs']} inputs differ); "
                                  "no bundle written")
            model_entries[name] = {key: f"{name}/{file}" for key, file in files.items()}
            model_entries[name]["hidden_size"] = int(model.network.hidden_size)
        # The fp32 graphs all passed parity; the int8 indexer encoder is an extra, with its own rule.
        indexer = models["indexer"]
        if not indexer_int8:
            model_entries["indexer"]["int8_skipped"] = "disabled by the export setting indexer_int8"
        elif not indexer.parity_inputs:
            model_entries["indexer"]["int8_skipped"] = "no parity inputs to measure its agreement on"
        else:
            fields = write_int8_encoder(stage / "indexer", list(indexer.parity_inputs),
                                        tokenize_with(tokenizer, indexer.max_length), codebook_sizes,
                                        indexer_int8_min_agreement)
            if "encoder_int8" in fields:
                fields["encoder_int8"] = f"indexer/{fields['encoder_int8']}"
            model_entries["indexer"].update(fields)
        shutil.copyfile(resolve_encoder_path(encoder) / "tokenizer.json", stage / "tokenizer.json")
        trie.save(stage / "trie.bin")
        with open(stage / "documents.jsonl", "w", encoding="utf-8") as handle:
            for document, semantic_id in zip(documents, semantic_ids, strict=True):
                handle.write(json.dumps(document_record(document, semantic_id), ensure_ascii=False) + "\n")
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "semantic_ids": {"num_levels": reference.num_levels, "codebook_size": reference.codebook_size,
                             "counter_size": reference.counter_size, "codebook_sizes": codebook_sizes},
            "tokenizer": "tokenizer.json",
            "max_query_length": int(max_query_length),
            "max_document_length": int(max_document_length),
            "models": model_entries,
            "recommendation": {"max_history": int(max_history), "history_separator": history_separator,
                               "history_order": "most_recent_first"},
            "trie": "trie.bin",
            "documents": "documents.jsonl",
            "num_documents": len(documents),
            "index_version": 0,
            "onnx_parity": parity,
            "training_config": dict(training_config or {}),
            "evaluation": dict(evaluation or {}),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    logger.info("wrote bundle %s (%d documents, models %s)", out_dir, len(documents), ", ".join(model_entries))
    return manifest
