"""The model every LMIndexer stage trains: the semantic-ID network plus the reconstructor, and the
loss of a stage (see the package docstring for the schedule).

Forward pass of a batch of documents at level t (earlier codes c_0..c_{t-1} teacher-forced):
encoder states (B, S, d) -> ID decoder over [start, E^0[c_0], ..., E^{t-1}[c_{t-1}]] -> decoder
states (B, t + 1, d), h^t the last -> the ID vectors [E^j[c_j] for j < t, h^t or its quantised
vector] (B, t + 1, d) -> the reconstructor scores the document's tokens from them and the hints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from training.indexing.lmindexer.config import LMIndexerConfig
from training.indexing.lmindexer.encoder_states import CorpusTensors, EncoderStates, pad_rows
from training.indexing.losses import (
    IGNORE_INDEX,
    commitment_loss,
    contrastive_loss,
    reconstruction_accuracy,
    reconstruction_loss,
    same_prefix_mask,
)
from training.indexing.network import SemanticIdNetwork
from training.indexing.quantizer import quantize
from training.indexing.reconstructor import Reconstructor, sample_hint_mask


@dataclass(frozen=True)
class StageSpec:
    """How one stage computes its loss."""

    level: int
    kind: Literal["warmup", "nocode", "full", "consolidate"]
    hint_p: float
    contrastive: bool
    commitment: bool

    @property
    def name(self) -> str:
        return "consolidate" if self.kind == "consolidate" else f"level{self.level}-{self.kind}"


@dataclass(frozen=True)
class DocumentBatch:
    """Documents of one step: their corpus rows and their codes of the levels before the current one."""

    rows: list[int]
    earlier: np.ndarray  # (B, level) int64

    def __len__(self) -> int:
        return len(self.rows)


@torch.no_grad()
def init_decoder_as_mean_pool(network: SemanticIdNetwork) -> None:
    """Make the untrained ID decoder compute LN(mean of the encoder states) at every position.

    A random decoder turns the encoder's states into a random pooling, and the first stages then
    start from a representation worse than the encoder's own sentence embedding (mean pooling for
    all-MiniLM-L6-v2). With zero queries every cross-attention weight is uniform over the real
    tokens; identity value / output projections pass the mean through; the self-attention and
    feed-forward outputs start at zero (their residual branches are off until training opens them),
    and the start / position vectors start at zero. Training moves away from this point.
    """
    d = network.hidden_size
    eye = torch.eye(d)
    network.start.zero_()
    network.position.weight.zero_()
    for layer in network.layers:
        layer.cross_q.weight.zero_()
        layer.cross_q.bias.zero_()
        layer.cross_kv.weight[d:].copy_(eye)
        layer.cross_kv.bias[d:].zero_()
        layer.cross_out.weight.copy_(eye)
        layer.cross_out.bias.zero_()
        layer.self_out.weight.zero_()
        layer.self_out.bias.zero_()
        layer.ff[-1].weight.zero_()
        layer.ff[-1].bias.zero_()


class IndexerModel(nn.Module):
    """The shared network plus the reconstructor (one module, so one checkpoint per stage), and the
    forward pieces of the stages over the tokenized corpus.

    Its state_dict holds `network.*` and `reconstructor.*` only; the corpus, the encoder states and
    the warm-up codebook are inputs (the codebook is a fixed random K x d matrix drawn from seed + 3:
    the official frozen xavier-initialised codebook of the reconstructor warm-up).
    """

    def __init__(self, network: SemanticIdNetwork, reconstructor: Reconstructor, encoder_states: EncoderStates,
                 corpus: CorpusTensors, config: LMIndexerConfig) -> None:
        super().__init__()
        self.network = network
        self.reconstructor = reconstructor
        self.encoder_states = encoder_states
        self.corpus = corpus
        self.config = config
        self.register_buffer("vocab_ids", corpus.vocab_ids.clone(), persistent=False)  # (V,)
        generator = torch.Generator().manual_seed(config.seed + 3)
        warmup = torch.randn(config.codebook_size, network.hidden_size, generator=generator)
        self.register_buffer("warmup_codebook", warmup, persistent=False)  # (K, d)

    @property
    def device(self) -> torch.device:
        return self.vocab_ids.device

    @property
    def logit_temperature(self) -> float:
        """tau * sqrt(d): what the raw code logits h . e are divided by in the quantizer's softmax and
        in L_commitment.

        h is a LayerNorm output and the codebooks are rescaled to the mean |h| (k-means init), so both
        have norm ~sqrt(d) and h . e ~ d cos (~384 cos for all-MiniLM-L6-v2): with the official tau = 1
        on raw logits the softmax is one-hot and the soft path passes no gradient (on a 2,000-item
        subset a quantised stage then moved codes at random, -0.07 AMI). Scaling by 1 / sqrt(d), as the
        official code scales T5's logits by d^-0.5, makes tau = 1 work at any encoder width; the presets
        used to carry tau = 20 (~sqrt(384)) for one width only. The argmax (the code) is unchanged."""
        return self.config.tau * math.sqrt(self.network.hidden_size)

    def output_embeddings(self) -> torch.Tensor:
        """(V, d) rows of the encoder's (tied) token-embedding matrix for the output vocabulary."""
        return self.network.encoder.get_input_embeddings().weight[self.vocab_ids]

    def hidden(self, rows: Sequence[int], earlier: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids (B, S), mask (B, S), decoder states (B, t+1, d)) with the earlier codes (B, t) teacher-forced."""
        ids, mask, states = self.encoder_states.states(rows, self.corpus, self.device)
        codes = torch.as_tensor(earlier, device=self.device)  # (B, t)
        vectors = self.network.embed_codes(codes)[:, None]  # (B, 1, t, d)
        hidden = self.network.decode(states, mask, vectors, folded=True)[:, 0]  # (B, t+1, d)
        return ids, mask, hidden

    def id_vectors(self, hidden: torch.Tensor, earlier: np.ndarray, spec: StageSpec) -> torch.Tensor:
        """(B, t+1, d): the earlier code vectors, then h^t (nocode) or its quantised vector (warm-up:
        on the fixed random codebook; full: on E^t)."""
        level = spec.level
        codes = torch.as_tensor(earlier, device=self.device)
        current = hidden[:, level]
        if spec.kind != "nocode":
            codebook = self.warmup_codebook if spec.kind == "warmup" else self.network.codebooks[level]
            current = quantize(current, codebook, self.logit_temperature).vectors
        return torch.cat([self.network.embed_codes(codes), current[:, None]], dim=1)

    def reconstruction(self, rows: Sequence[int], ids: torch.Tensor, mask: torch.Tensor, id_vectors: torch.Tensor,
                       hint_p: float, generator: torch.Generator | None,
                       sample_targets: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits (T, V), labels (T,)) of the reconstruction of documents `rows`.

        sample_targets: score a `recon_target_fraction` sample of the real tokens (training); draws
        come from `generator` (None = torch's global one) on the CPU, so every device draws the same.
        """
        targets = pad_rows([self.corpus.targets[i] for i in rows], IGNORE_INDEX).to(self.device)  # (B, S)
        selected = targets != IGNORE_INDEX  # (B, S) real, non-special tokens: the targets and the hints
        hint_tokens = selected.long()
        if sample_targets and self.config.recon_target_fraction < 1.0:
            draw = torch.rand(selected.shape, generator=generator).to(self.device)
            selected = selected & (draw < self.config.recon_target_fraction)
        # Target rows first in each document: positions (B, R) with R the largest count; valid (B, R).
        counts = selected.sum(dim=1)  # (B,)
        r = max(1, int(counts.max()))
        positions = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :r]  # (B, R)
        valid = torch.arange(r, device=self.device).view(1, r) < counts.view(-1, 1)  # (B, R)
        hint_mask = sample_hint_mask(hint_tokens, hint_p, generator, positions)  # (B, R, S)
        token_embeddings = self.network.encoder.get_input_embeddings()(ids)  # (B, S, d)
        z = self.reconstructor(id_vectors, token_embeddings, mask, hint_mask, positions)  # (B, R, d)
        labels = targets.gather(1, positions)[valid]  # (T,)
        logits = self.reconstructor.project(z[valid], self.output_embeddings())  # (T, V)
        return reconstruction_loss(logits, labels), logits, labels

    def stage_loss(self, batch: DocumentBatch, spec: StageSpec) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one training batch under `spec` and its parts (lmindexer-method.md, section 4)."""
        config = self.config
        level = spec.level
        if spec.kind == "consolidate":
            return self.consolidation_loss(batch)
        if spec.kind == "warmup":  # only the reconstructor learns: no graph through encoder and decoder
            with torch.no_grad():
                ids, mask, hidden = self.hidden(batch.rows, batch.earlier)
        else:
            ids, mask, hidden = self.hidden(batch.rows, batch.earlier)
        id_vectors = self.id_vectors(hidden, batch.earlier, spec)
        recon, logits, labels = self.reconstruction(batch.rows, ids, mask, id_vectors, spec.hint_p, None, True)
        loss = config.recon_weight * recon
        correct, total = reconstruction_accuracy(logits.detach(), labels)
        logs = {"recon": float(recon.detach()), "acc": correct / max(1, total)}
        if spec.contrastive:
            _, _, second = self.hidden(batch.rows, batch.earlier)  # second dropout view
            if level == 0:
                contrast = contrastive_loss(hidden[:, 0], second[:, 0], temperature=config.contrastive_temperature,
                                            normalize=config.contrastive_normalize)
            else:
                prefixes = torch.as_tensor(batch.earlier, device=self.device)
                candidate_mask = same_prefix_mask(prefixes, config.in_batch_negatives)
                contrast = contrastive_loss(hidden[:, level], second[:, level], candidate_mask=candidate_mask,
                                            temperature=config.contrastive_temperature,
                                            normalize=config.contrastive_normalize)
            loss = loss + config.contrastive_weight * contrast
            logs["contrast"] = float(contrast.detach())
        if spec.commitment and level > 0:
            earlier = torch.as_tensor(batch.earlier, device=self.device)
            # h . e / (tau sqrt(d)): the logits are ~|h||e| cos ~ d cos, so an unscaled CE is a cliff whose
            # gradient swamps the other losses after clipping (see logit_temperature). The argmax, which
            # is what must not move, is unchanged.
            logits_list = [self.network.level_logits(hidden[:, j], j) / self.logit_temperature
                           for j in range(level)]
            commit = commitment_loss(logits_list, earlier)
            loss = loss + config.commitment_weight * commit
            logs["commit"] = float(commit.detach())
        return loss, logs

    def consolidation_loss(self, batch: DocumentBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The consolidation stage's loss: teacher-forced CE of every level's logits against the batch's
        whole ID table rows (batch.earlier (B, L): all the codes), on h . e / (consolidate_tau sqrt(d))."""
        _, _, hidden = self.hidden(batch.rows, batch.earlier)  # (B, L+1, d)
        codes = torch.as_tensor(batch.earlier, device=self.device)
        scale = self.config.consolidate_tau * math.sqrt(self.network.hidden_size)
        logits_list = [self.network.level_logits(hidden[:, j], j) / scale for j in range(codes.shape[1])]
        loss = commitment_loss(logits_list, codes)
        correct = torch.stack([lg.argmax(-1) == codes[:, j] for j, lg in enumerate(logits_list)], dim=1)
        return loss, {"commit": float(loss.detach()), "agree": float(correct.all(dim=1).float().mean())}

    @torch.no_grad()
    def reconstruction_figures(self, batch: DocumentBatch, spec: StageSpec,
                               generator: torch.Generator) -> tuple[float, int, int]:
        """(summed loss, correct, scored tokens) of reconstructing `batch` with every target scored and
        hint masks from `generator` (the dev criterion)."""
        ids, mask, hidden = self.hidden(batch.rows, batch.earlier)
        id_vectors = self.id_vectors(hidden, batch.earlier, spec)
        loss, logits, labels = self.reconstruction(batch.rows, ids, mask, id_vectors, spec.hint_p, generator, False)
        correct, count = reconstruction_accuracy(logits, labels)
        return float(loss) * count, correct, count
