"""The bundle's ONNX graphs under onnxruntime: tokenize, encode once, decode level by level.

Blocking code: call it from a worker thread (the micro-batcher does), never on the event loop.
The two graphs per model follow docs/bundle.md:
    encoder.onnx       input_ids, attention_mask (B, S) int64 -> encoder_states (B, S, d) float32
    decoder_step.onnx  encoder_states, attention_mask, codes (B, W, L) int64, level () int64
                       -> log_probs (B, W, V) float32, meaningful up to codebook_sizes[level]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from service.bundle import ModelFiles
from service.settings import ExecutionProvider

logger = logging.getLogger(__name__)


def choose_providers(requested: ExecutionProvider) -> list[str]:
    """The onnxruntime providers for ``requested``: CUDA first when asked for (or auto and present)."""
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if requested is ExecutionProvider.CUDA and not has_cuda:
        logger.warning("CUDA execution provider requested but not available (providers: %s); using CPU",
                       available)
    if requested is not ExecutionProvider.CPU and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TextTokenizer:
    """A `tokenizers` tokenizer that truncates to a maximum length and pads to the batch's longest."""

    def __init__(self, path: Path, max_length: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        # The tokenizer's own truncation keeps the special tokens ([CLS] ... [SEP]) the model was
        # trained with, and stops work early on very long texts.
        self._tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        pad = self._tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else int(pad)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The (truncated) token ids of each text, unpadded."""
        return [enc.ids for enc in self._tokenizer.encode_batch(texts)]

    def pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (B, S) int64, S = the longest row."""
        length = max(1, max(len(ids) for ids in rows))
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        return input_ids, attention_mask

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (B, S) int64, S = the longest (truncated) text."""
        return self.pad(self.token_ids(texts))


@dataclass
class Encoded:
    """Encoder output for a batch of texts (computed once per query, reused at every level)."""

    states: np.ndarray  # (B, S, d) float32
    attention_mask: np.ndarray  # (B, S) int64


class OnnxModel:
    """One of the bundle's models (indexer, retriever or recommender): two onnxruntime sessions."""

    def __init__(self, files: ModelFiles, tokenizer: TextTokenizer, *,
                 codebook_sizes: tuple[int, ...], providers: list[str], intra_op_threads: int,
                 allow_spinning: bool = False) -> None:
        self.name = files.name
        self.tokenizer = tokenizer
        self.codebook_sizes = codebook_sizes
        self.num_levels = len(codebook_sizes) - 1
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        # One batch at a time per model (the batcher serialises calls): inter-op threads only add
        # contention on small machines.
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self._encoder = ort.InferenceSession(str(files.encoder), options, providers=providers)
        self._decoder = ort.InferenceSession(str(files.decoder_step), options, providers=providers)
        self.providers = self._encoder.get_providers()

    def encode(self, texts: list[str]) -> Encoded:
        """Tokenize and run the encoder once for a batch of texts."""
        input_ids, attention_mask = self.tokenizer.encode(texts)
        (states,) = self._encoder.run(["encoder_states"],
                                      {"input_ids": input_ids, "attention_mask": attention_mask})
        return Encoded(states=states, attention_mask=attention_mask)

    def step(self, encoded: Encoded, codes: np.ndarray, level: int) -> np.ndarray:
        """Log-probabilities of the codes at ``level``: codes (B, W, L) -> (B, W, codebook_sizes[level])."""
        (log_probs,) = self._decoder.run(["log_probs"], {
            "encoder_states": encoded.states,
            "attention_mask": encoded.attention_mask,
            "codes": np.ascontiguousarray(codes, dtype=np.int64),
            "level": np.asarray(level, dtype=np.int64),
        })
        return log_probs[..., : self.codebook_sizes[level]]

    def greedy_codes(self, texts: list[str], alternatives: int,
                     chunk_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """The learned codes of new documents: argmax per level, levels 0..L-1 (the indexer's job).

        Returns ``codes`` (B, L) int64, and ``last_level_ranked`` (B, A) int64: the codes of the last
        learned level by decreasing probability (A = ``alternatives``), so that a full counter under
        the greedy prefix can fall back to the next most probable prefix deterministically.
        Texts run in chunks of similar length: documents vary a lot (Beauty: 41 tokens on average,
        89 at the 99th percentile), and padding a random batch to its longest doubles the work.
        """
        rows = self.tokenizer.token_ids(texts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        count = min(alternatives, self.codebook_sizes[self.num_levels - 1])
        codes = np.zeros((len(rows), self.num_levels), dtype=np.int64)
        ranked = np.zeros((len(rows), count), dtype=np.int64)
        for start in range(0, len(order), chunk_size):
            chunk = order[start: start + chunk_size]
            chunk_codes, chunk_ranked = self._greedy(*self.tokenizer.pad([rows[i] for i in chunk]), count)
            codes[chunk] = chunk_codes
            ranked[chunk] = chunk_ranked
        return codes, ranked

    def _greedy(self, input_ids: np.ndarray, attention_mask: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        (states,) = self._encoder.run(["encoder_states"], {"input_ids": input_ids, "attention_mask": attention_mask})
        encoded = Encoded(states=states, attention_mask=attention_mask)
        codes = np.zeros((len(input_ids), 1, self.num_levels), dtype=np.int64)  # (B, W=1, L)
        ranked = np.zeros((len(input_ids), count), dtype=np.int64)
        for level in range(self.num_levels):
            log_probs = self.step(encoded, codes, level)[:, 0, :]  # (B, K)
            codes[:, 0, level] = np.argmax(log_probs, axis=1)
            if level == self.num_levels - 1:
                # Stable sort: ties break towards the lower code, the same on every replica.
                ranked = np.argsort(-log_probs, axis=1, kind="stable")[:, :count]
        return codes[:, 0, :], ranked.astype(np.int64)
