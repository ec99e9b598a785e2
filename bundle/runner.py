"""A bundle's text model under onnxruntime: tokenize, encode once per input, decode level by level.

The one runner of the bundle's text models: the service searches and indexes with it, and the
export's parity check holds it against the torch model, so what is checked is what is served.
Blocking code: the service calls it from worker threads, never on its event loop.

    encoder.onnx       input_ids, attention_mask (B, S) int64 -> encoder_states (B, S, d) float32
    decoder_step.onnx  encoder_states, attention_mask, codes (B, W, L) int64, level () int64
                       -> log_probs (B, W, V) float32, meaningful up to codebook_sizes[level]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from bundle.decoding import QueryStep, grouped_step_fn
from bundle.directory import Bundle
from bundle.errors import BundleError
from bundle.manifest import TextModelEntry
from bundle.recommendation import mean_pooled
from bundle.sessions import inference_session
from trie import StepFn, greedy_codes

logger = logging.getLogger(__name__)

Providers = Literal["auto", "cpu", "cuda"]


def choose_providers(requested: Providers) -> list[str]:
    """The onnxruntime providers for ``requested``: CUDA first when asked for (or auto and present)."""
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if requested == "cuda" and not has_cuda:
        logger.warning("CUDA execution provider requested but not available (providers: %s); using CPU", available)
    if requested != "cpu" and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TextTokenizer:
    """The bundle's tokenizer.json, truncating to ``max_length`` tokens and padding to the batch's longest."""

    def __init__(self, path: Path, max_length: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        # The tokenizer's own truncation keeps the special tokens ([CLS] ... [SEP]) the model was
        # trained with, and stops work early on very long texts.
        self._tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        pad = self._tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else int(pad)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The (truncated) token ids of each text, unpadded."""
        return [enc.ids for enc in self._tokenizer.encode_batch(list(texts))]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (B, S) int64, S = the longest row."""
        length = max(1, max(len(ids) for ids in rows))
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        return input_ids, attention_mask

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (B, S) int64, S = the longest (truncated) text."""
        return self.pad(self.token_ids(texts))


@dataclass
class Encoded:
    """Encoder output for a batch of texts (computed once per input, reused at every level)."""

    states: np.ndarray  # (B, S, d) float32
    attention_mask: np.ndarray  # (B, S) int64

    def rows(self, index: np.ndarray) -> Encoded:
        """The inputs ``index`` (ascending, distinct) of the batch; the batch itself when that is all of them."""
        if len(index) == self.states.shape[0]:
            return self
        return Encoded(self.states[index], self.attention_mask[index])


class OnnxRunner:
    """One text model of a bundle (indexer, retriever or recommender): two onnxruntime sessions."""

    def __init__(self, encoder: Path, decoder_step: Path, tokenizer: TextTokenizer, codebook_sizes: Sequence[int],
                 *, name: str, providers: Sequence[str] = ("CPUExecutionProvider",), intra_op_threads: int = 0,
                 allow_spinning: bool = False) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.codebook_sizes = tuple(int(s) for s in codebook_sizes)
        self.num_levels = len(self.codebook_sizes) - 1
        session = {"intra_op_threads": intra_op_threads, "allow_spinning": allow_spinning}
        self._encoder = inference_session(encoder, providers, **session)
        self._decoder = inference_session(decoder_step, providers, **session)
        self.providers = self._encoder.get_providers()

    @classmethod
    def for_model(cls, bundle: Bundle, role: str, *, int8: bool = False, tokenizer: TextTokenizer | None = None,
                  providers: Sequence[str] = ("CPUExecutionProvider",), intra_op_threads: int = 0,
                  allow_spinning: bool = False) -> OnnxRunner:
        """The runner of ``bundle``'s model ``role``, reading inputs as the manifest says it was trained
        (``max_input_length``). ``int8``: the indexer's int8 encoder (BundleError when there is none).
        ``tokenizer``: one to share, which must cut at the entry's ``max_input_length``."""
        manifest = bundle.manifest
        entry = manifest.models.get(role)
        if not isinstance(entry, TextModelEntry):
            raise BundleError(f"{bundle.directory}: no text model {role!r} in the bundle")
        encoder = entry.encoder
        if int8:
            if entry.int8_encoder is None or entry.int8_encoder.file is None:
                raise BundleError(f"{bundle.directory}: models.{role} has no int8 encoder")
            encoder = entry.int8_encoder.file
        if tokenizer is None:
            tokenizer = TextTokenizer(bundle.path(manifest.tokenizer), entry.max_input_length)
        elif tokenizer.max_length != entry.max_input_length:
            raise ValueError(f"{role}: tokenizer cuts at {tokenizer.max_length} tokens, the model was trained "
                             f"with {entry.max_input_length}")
        return cls(bundle.path(encoder), bundle.path(entry.decoder_step), tokenizer, manifest.codebook_sizes,
                   name=role, providers=providers, intra_op_threads=intra_op_threads, allow_spinning=allow_spinning)

    def encode_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Encoded:
        """Run the encoder on token ids and mask (B, S) int64."""
        (states,) = self._encoder.run(["encoder_states"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return Encoded(states=states, attention_mask=attention_mask)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenize and run the encoder once for a batch of texts."""
        return self.encode_ids(*self.tokenizer.encode(texts))

    def step(self, encoded: Encoded, codes: np.ndarray, level: int) -> np.ndarray:
        """Log-probabilities of the codes at ``level``: codes (B, W, L) -> (B, W, codebook_sizes[level])."""
        (log_probs,) = self._decoder.run(["log_probs"], {
            "encoder_states": encoded.states,
            "attention_mask": encoded.attention_mask,
            "codes": np.ascontiguousarray(codes, dtype=np.int64),
            "level": np.asarray(level, dtype=np.int64),
        })
        return log_probs[..., : self.codebook_sizes[level]]

    def query_step(self, encoded: Encoded) -> QueryStep:
        """The decoder step over a subset of ``encoded``'s inputs (bundle.decoding.QueryStep)."""
        def step(queries: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
            return self.step(encoded.rows(queries), codes, level)
        return step

    def step_fn(self, encoded: Encoded) -> StepFn:
        """The trie StepFn decoding ``encoded``'s inputs: live beams grouped by input, one decoder call per level."""
        return grouped_step_fn(self.query_step(encoded), self.codebook_sizes)

    def greedy_codes(self, texts: Sequence[str], alternatives: int,
                     chunk_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """The learned codes of new documents (``trie.greedy_codes``): ``codes`` (B, L) int64 and the last
        level's ``alternatives`` most probable codes (B, A) int64, the fallback prefixes of the counter rule.

        Texts run in chunks of similar length: documents vary a lot (Beauty: 41 tokens on average, 89 at
        the 99th percentile), and padding a random batch to its longest doubles the work.
        """
        codes, ranked, _ = self.index_texts(texts, alternatives, chunk_size, vectors=False)
        return codes, ranked

    def index_texts(self, texts: Sequence[str], alternatives: int, chunk_size: int = 32,
                    vectors: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``greedy_codes`` and, from the same encoder run, each text's vector (B, d) float32: the encoder
        states mean-pooled over the real tokens and L2-normalised (``bundle.recommendation.mean_pooled``,
        the item-token recommender's text vectors; (B, 0) when ``vectors`` is false)."""
        rows = self.tokenizer.token_ids(texts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        count = min(alternatives, self.codebook_sizes[self.num_levels - 1])
        codes = np.zeros((len(rows), self.num_levels), dtype=np.int64)
        ranked = np.zeros((len(rows), count), dtype=np.int64)
        pooled: np.ndarray | None = None
        for start in range(0, len(order), chunk_size):
            chunk = order[start: start + chunk_size]
            encoded = self.encode_ids(*self.tokenizer.pad([rows[i] for i in chunk]))
            codes[chunk], ranked[chunk] = greedy_codes(self.step_fn(encoded), len(chunk), self.codebook_sizes, count)
            if vectors:
                if pooled is None:
                    pooled = np.zeros((len(rows), encoded.states.shape[-1]), dtype=np.float32)
                pooled[chunk] = mean_pooled(encoded.states, encoded.attention_mask)
        return codes, ranked, pooled if pooled is not None else np.zeros((len(rows), 0), dtype=np.float32)


    def mean_vectors(self, texts: Sequence[str], chunk_size: int = 32) -> np.ndarray:
        """Each text's vector (B, d) float32: the encoder states mean-pooled over the real tokens and
        L2-normalised (``bundle.recommendation.mean_pooled``; the item vectors of ``source`` "indexer"), in
        chunks of similar length. The same vectors ``index_texts`` gives, without the decoder."""
        rows = self.tokenizer.token_ids(texts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pooled: np.ndarray | None = None
        for start in range(0, len(order), chunk_size):
            chunk = order[start: start + chunk_size]
            encoded = self.encode_ids(*self.tokenizer.pad([rows[i] for i in chunk]))
            if pooled is None:
                pooled = np.zeros((len(rows), encoded.states.shape[-1]), dtype=np.float32)
            pooled[chunk] = mean_pooled(encoded.states, encoded.attention_mask)
        return pooled if pooled is not None else np.zeros((0, 0), dtype=np.float32)


class TextVectorRunner:
    """The bundle's own text encoder (``item_vectors.source`` "text_encoder"): texts -> vectors (B, D)."""

    def __init__(self, encoder: Path, tokenizer: TextTokenizer, *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0) -> None:
        self.tokenizer = tokenizer
        self._session = inference_session(encoder, providers, intra_op_threads=intra_op_threads)

    @classmethod
    def for_bundle(cls, bundle: Bundle, **options: object) -> TextVectorRunner | None:
        """The text encoder of the bundle's item vectors, or None when the indexer's encoder makes them (or the
        bundle has no item vectors)."""
        spec = bundle.manifest.item_vectors
        if spec is None or spec.source != "text_encoder":
            return None
        assert spec.text_encoder_file is not None and spec.tokenizer_file is not None
        tokenizer = TextTokenizer(bundle.path(spec.tokenizer_file), spec.max_input_length)
        return cls(bundle.path(spec.text_encoder_file), tokenizer, **options)  # type: ignore[arg-type]

    def vectors(self, texts: Sequence[str], chunk_size: int = 32) -> np.ndarray:
        """(B, D) float32 vectors of ``texts`` (chunks of similar length)."""
        rows = self.tokenizer.token_ids(texts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: np.ndarray | None = None
        for start in range(0, len(order), chunk_size):
            chunk = order[start: start + chunk_size]
            input_ids, attention_mask = self.tokenizer.pad([rows[i] for i in chunk])
            (vectors,) = self._session.run(["vectors"], {"input_ids": input_ids, "attention_mask": attention_mask})
            if out is None:
                out = np.zeros((len(rows), vectors.shape[1]), dtype=np.float32)
            out[chunk] = vectors
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)
