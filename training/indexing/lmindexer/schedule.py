"""The LMIndexer schedule: the progressive, level-by-level stages (see the package docstring), each
trained by the project's one training loop (training.loop), with k-means codebook initialisation
and code assignment between them.

Determinism: the same seed, data and thread count on one CPU give the same IDs. The k-means runs on one
OpenMP thread (multi-threaded Lloyd iterations sum in a timing-dependent order); codes are argmax over
torch matmuls, repeatable for a fixed thread count; the table is re-assigned greedily from the final
network, so the IDs written are a function of the saved network alone.

Outputs under `out_dir`: `network/` (SemanticIdNetwork.save: fine-tuning starts from it),
`reconstructor.safetensors`, `lmindexer.json` (the config, per-level diagnostics and the record of the
item vectors), `item_vectors.npy` (every document's text vector from the saved network's encoder, made
by the final-network pass: `training.indexing.item_vectors`) and `checkpoints/<stage>/` (one resumable
training-loop run per stage; `checkpoint_dir` puts them elsewhere, e.g. to resume a killed `learn-ids`,
whose output directory is a fresh staging directory).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_mutual_info_score
from threadpoolctl import threadpool_limits

from training.config import config_to_dict
from training.data.corpus import Document
from training.encoder import mean_pool
from training.indexing.diagnostics import code_perplexity, same_prefix_diff_ratio
from training.indexing.item_vectors import RECORD_KEY, item_vectors_record, write_item_vectors
from training.indexing.learning import LearnedCodes
from training.indexing.lmindexer.config import LMIndexerConfig
from training.indexing.lmindexer.encoder_states import EncoderStates, pad_rows, state_cache_key, tokenize_corpus
from training.indexing.lmindexer.model import DocumentBatch, IndexerModel, StageSpec, init_decoder_as_mean_pool
from training.indexing.network import NetworkConfig, SemanticIdNetwork
from training.indexing.reconstructor import Reconstructor
from training.loop import DistContext, LoopSettings, distributed_context, finished, seed_everything, shard, train
from training.progress import library_bars, progress_bar

logger = logging.getLogger(__name__)

CONFIG_FILE = "lmindexer.json"
RECONSTRUCTOR_FILE = "reconstructor.safetensors"
NETWORK_DIR = "network"

# Seeds of the stages' data order: (seed, this + 10 * level, epoch).
_STAGE_SEEDS = {"warmup": 1, "nocode": 2, "full": 3, "consolidate": 4}


class LMIndexer:
    """Holds the corpus, the model and the codes, and runs the schedule (see the package docstring)."""

    def __init__(self, texts: Sequence[str], config: LMIndexerConfig, out_dir: Path,
                 context: DistContext | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.context = context or DistContext()
        self.device = self.context.device
        self.texts = list(texts)
        seed_everything(config.seed)
        self.corpus = tokenize_corpus(self.texts, config)
        network = SemanticIdNetwork(NetworkConfig(
            encoder=config.encoder, num_levels=config.num_levels, codebook_size=config.codebook_size,
            counter_size=config.counter_size, decoder_layers=config.decoder_layers,
            decoder_heads=config.decoder_heads, decoder_ff_size=config.decoder_ff_size, dropout=config.dropout))
        if config.decoder_init == "mean_pool":
            init_decoder_as_mean_pool(network)
        self.encoder_states = EncoderStates(network, config)
        reconstructor = Reconstructor(network.hidden_size, len(self.corpus.vocab_ids),
                                      num_layers=config.reconstructor_layers, num_heads=config.reconstructor_heads,
                                      ff_size=config.reconstructor_ff_size, dropout=config.dropout,
                                      max_positions=max(config.max_length, 8))
        self.model = IndexerModel(network, reconstructor, self.encoder_states, self.corpus, config).to(self.device)
        self.network = network
        self.codes = np.zeros((len(self.corpus), config.num_levels), dtype=np.int64)
        n = len(self.corpus)
        dev_rng = np.random.default_rng(config.seed + 7)
        self.dev_rows = np.sort(dev_rng.choice(n, size=min(config.dev_size, n), replace=False)).tolist()
        self.labels: list[str | None] | None = None
        self.diagnostics: dict[str, Any] = {"levels": [], "stages": []}
        self.item_vectors: dict[str, Any] | None = None  # the record of item_vectors.npy, once written
        self.checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else self.out_dir / "checkpoints"

    def batch(self, rows: Sequence[int], level: int) -> DocumentBatch:
        """The documents `rows` with their codes of the levels before `level`."""
        rows = [int(r) for r in rows]
        return DocumentBatch(rows, self.codes[rows, :level])

    # ----------------------------------------------------------------------------------------------
    # batches

    def batches(self, epoch: int, level: int, stage_seed: int, fraction: float = 1.0) -> list[list[int]]:
        """Document rows per step for `epoch`: shuffled; from level 1 on, packed by shared prefix.

        A random `fraction * train_fraction` of the documents takes part (fresh each epoch)."""
        config = self.config
        rng = np.random.default_rng([config.seed, stage_seed, epoch])
        n = len(self.corpus)
        rows = rng.permutation(n)
        keep = fraction * config.train_fraction
        if keep < 1.0:
            rows = rows[: min(n, max(config.batch_size, round(n * keep)))]
        if level == 0:
            return [rows[i : i + config.batch_size].tolist() for i in range(0, len(rows), config.batch_size)]
        # Same-prefix packing: sort the shuffled rows by prefix (stable, so the order inside a prefix
        # stays random), cut each prefix into groups of group_size, shuffle the groups, fill batches.
        prefix_keys = self.codes[rows, :level]
        order = np.lexsort(prefix_keys.T[::-1])
        rows = rows[order]
        prefix_keys = prefix_keys[order]
        groups: list[list[int]] = []
        start = 0
        while start < len(rows):
            end = start + 1
            same = (prefix_keys[start:] == prefix_keys[start]).all(axis=1)
            run = int(np.argmin(same)) if not same.all() else len(same)  # length of this prefix's run
            end = start + min(run, config.group_size)
            groups.append(rows[start:end].tolist())
            start = end
        group_order = rng.permutation(len(groups))
        batches: list[list[int]] = []
        current: list[int] = []
        for g in group_order:
            if current and len(current) + len(groups[g]) > config.batch_size:
                batches.append(current)
                current = []
            current.extend(groups[g])
        if current:
            batches.append(current)
        return batches

    # ----------------------------------------------------------------------------------------------
    # evaluation passes

    @torch.no_grad()
    def hidden_states(self, level: int) -> np.ndarray:
        """(N, d) float32 h^level of every document (eval mode, earlier codes teacher-forced)."""
        self.model.eval()
        order = np.argsort([-len(r) for r in self.corpus.input_ids], kind="stable")
        out = np.zeros((len(self.corpus), self.network.hidden_size), dtype=np.float32)
        for start in range(0, len(order), self.config.eval_batch_size):
            batch = self.batch(order[start : start + self.config.eval_batch_size], level)
            _, _, hidden = self.model.hidden(batch.rows, batch.earlier)
            out[batch.rows] = hidden[:, level].float().cpu().numpy()
        return out

    @torch.no_grad()
    def dev_reconstruction(self, spec: StageSpec) -> dict[str, float]:
        """Reconstruction loss and accuracy on the dev documents, fixed hint masks, all targets."""
        if not self.dev_rows:
            return {}
        self.model.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 11)
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, len(self.dev_rows), self.config.eval_batch_size):
            batch = self.batch(self.dev_rows[start : start + self.config.eval_batch_size], spec.level)
            loss, ok, n = self.model.reconstruction_figures(batch, spec, generator)
            total_loss += loss
            correct += ok
            count += n
        return {"dev_recon_loss": total_loss / max(1, count), "dev_recon_accuracy": correct / max(1, count)}

    # ----------------------------------------------------------------------------------------------
    # stages

    def stage_lr(self, spec: StageSpec) -> Any:
        """The learning rate of each parameter of `model` in stage `spec` (None: not trained there).

        Warm-up: the reconstructor only. Then also the ID decoder and the trained encoder layers
        (`encoder_lr`), and in the full stage the codebooks (only E^level moves, see run_stage). The
        counter head is fine-tuning's."""
        config = self.config
        lr = (config.consolidate_lr or config.lr) if spec.kind == "consolidate" else config.lr

        def lr_of(name: str) -> float | None:
            if name.startswith("reconstructor."):
                return None if spec.kind == "consolidate" else lr
            if spec.kind == "warmup" or name == "network.counter_head":
                return None
            if name == "network.codebooks":
                return lr if spec.kind in ("full", "consolidate") else None
            if name.startswith("network.encoder."):
                return config.encoder_lr
            return lr

        return lr_of

    def run_stage(self, spec: StageSpec, epochs: float) -> dict[str, Any]:
        """Train one stage for `epochs` (possibly fractional) epochs with training.loop; returns its record."""
        name = spec.name
        if epochs <= 0:
            return {"stage": name, "epochs": 0}
        passes = math.ceil(epochs)
        fraction = epochs / passes
        config = self.config
        stage_seed = _STAGE_SEEDS[spec.kind] + 10 * spec.level

        consolidate = spec.kind == "consolidate"

        def batches(epoch: int, rank: int, world_size: int) -> list[DocumentBatch]:
            # consolidation: shuffled documents (no prefix packing) with all their codes
            rows = self.batches(epoch, 0 if consolidate else spec.level, stage_seed, fraction)
            return [self.batch(r, spec.level) for r in shard(rows, rank, world_size)]

        steps = len(batches(0, self.context.rank, self.context.world_size)) * passes
        settings = LoopSettings(
            epochs=passes, lr=(config.consolidate_lr or config.lr) if consolidate else config.lr,
            weight_decay=config.weight_decay, schedule="linear",
            warmup_steps=math.ceil(steps * config.warmup_ratio), grad_clip=config.grad_clip, seed=config.seed,
            amp=config.amp, device=config.device, metric="dev_agreement" if consolidate else "dev_recon_loss",
            higher_is_better=consolidate,
            patience=config.patience, checkpoint_every=config.checkpoint_every, checkpoint_epochs=True,
            progress=config.progress)
        # the frozen encoder never changes: its weights stay out of the checkpoints
        encoder = self.network.encoder
        frozen = {f"network.encoder.{k}" for k, v in encoder.named_parameters() if not v.requires_grad}
        frozen |= {f"network.encoder.{k}" for k, _ in encoder.named_buffers()}
        hook = None
        if spec.kind == "full":
            keep = torch.zeros(config.num_levels, 1, 1, device=self.device)
            keep[spec.level] = 1.0  # only E^level learns; earlier codebooks stay what the codes were
            hook = self.network.codebooks.register_hook(lambda grad: grad * keep)
        evaluate = None
        if consolidate:
            evaluate = lambda model: {"dev_agreement": self.teacher_forced_agreement(self.dev_rows)}  # noqa: E731
        elif self.dev_rows:
            evaluate = lambda model: self.dev_reconstruction(spec)  # noqa: E731
        try:
            result = train(self.model, settings, batches, lambda model, batch: model.stage_loss(batch, spec),
                           self.checkpoint_dir / name, evaluate=evaluate if self.dev_rows else None,
                           lr_of=self.stage_lr(spec), no_decay=("network.codebooks",),
                           frozen_state=frozen.__contains__, name=name)
        finally:
            if hook is not None:
                hook.remove()
        record: dict[str, Any] = {"stage": name, "epochs": result.epochs, "steps": result.steps,
                                  "seconds": round(result.seconds, 2), "history": result.history,
                                  "stopped_early": result.stop_reason == "patience",
                                  "resumed": result.resumed_from > 0}
        if not consolidate:
            record.update(self.dev_reconstruction(spec))
        logger.info("%s done: %s", name, {k: v for k, v in record.items() if k != "history"})
        return record

    def init_codebook(self, level: int) -> dict[str, Any]:
        """k-means on h^level of all documents -> E^level (see the module docstring, step 3)."""
        config = self.config
        started = time.perf_counter()
        hidden = self.hidden_states(level)  # (N, d)
        norms = np.linalg.norm(hidden, axis=1)
        data = hidden / np.maximum(norms[:, None], 1e-12) if config.kmeans_normalize else hidden
        basis = None
        if level > 0 and config.residual_kmeans:
            earlier = self.network.codebooks.data[:level].reshape(-1, data.shape[1]).double().cpu().numpy()
            data, basis = prefix_residuals(data, self.codes[:, :level], earlier, config.residual_projection)
        k = min(config.codebook_size, len(data))
        if config.kmeans == "minibatch":
            km = MiniBatchKMeans(n_clusters=k, n_init=config.kmeans_n_init, max_iter=config.kmeans_max_iter,
                                 random_state=config.seed, batch_size=max(1024, 3 * k))
        else:
            km = KMeans(n_clusters=k, n_init=config.kmeans_n_init, max_iter=config.kmeans_max_iter,
                        random_state=config.seed)
        # One OpenMP thread: scikit-learn's Lloyd iterations add per-thread partial centroid sums in the order
        # the threads finish, so with more threads the centroids' last bits (and near-tie codes) vary between
        # runs of the same seed. Single-threaded it is repeatable; it costs seconds (RK-means on all of Beauty
        # fits 3 x 256 centroids in ~36 CPU-seconds).
        with threadpool_limits(limits=1, user_api="openmp"):
            km.fit(data.astype(np.float64))
        centroids = km.cluster_centers_
        if basis is not None:
            centroids = centroids - (centroids @ basis) @ basis.T
        centroids = centroids.astype(np.float32)
        if config.kmeans_normalize:
            centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
            centroids = centroids * float(norms.mean())
        codebook = self.network.codebooks.data[level]
        if k < config.codebook_size:  # fewer documents than codes: keep the random rows for the rest
            codebook[:k] = torch.from_numpy(centroids).to(codebook)
        else:
            codebook.copy_(torch.from_numpy(centroids))
        kmeans_codes = km.labels_.astype(np.int64)
        record = {"kmeans_seconds": round(time.perf_counter() - started, 2), "kmeans_inertia": float(km.inertia_),
                  "mean_hidden_norm": float(norms.mean())}
        if level > 0:
            # Does the network's rule (argmax h . e) keep the siblings apart that k-means put apart?
            argmax_codes = (hidden @ self.network.codebooks.data[level].cpu().numpy().T).argmax(1)
            record["kmeans_init_diff_ratio"] = same_prefix_diff_ratio(
                np.column_stack([self.codes[:, :level], kmeans_codes]), level)
            record["argmax_init_diff_ratio"] = same_prefix_diff_ratio(
                np.column_stack([self.codes[:, :level], argmax_codes]), level)
        if self.labels is not None:
            record["kmeans_init_category_ami"] = _ami(self.codes[:, :level], kmeans_codes, self.labels)
        return record

    @torch.no_grad()
    def greedy_reassignment(self) -> tuple[np.ndarray, np.ndarray]:
        """Greedy codes (N, L) of the final network, and the teacher-forced codes (N, L) it predicts.

        Greedy: c_t = argmax h^t . E^t with h^t computed from the greedy c_0..c_{t-1} (what assigning an
        ID to a document does, design.md job 2). Teacher-forced: h^t computed from the assigned codes
        self.codes[:, :t] (what each level's assignment saw). One encoder pass per batch for both; the
        batches and the folded decoder are those of `assign`, so level 0 gives the same numbers."""
        self.model.eval()
        levels = self.config.num_levels
        order = np.argsort([-len(r) for r in self.corpus.input_ids], kind="stable")
        greedy = np.zeros_like(self.codes)
        forced = np.zeros_like(self.codes)
        for start in range(0, len(order), self.config.eval_batch_size):
            rows = order[start : start + self.config.eval_batch_size].tolist()
            _, mask, states = self.encoder_states.states(rows, self.corpus, self.device)
            assigned = torch.as_tensor(self.codes[rows], device=self.device)  # (B, L)
            vectors = self.network.embed_codes(assigned[:, : levels - 1])[:, None]  # (B, 1, L-1, d)
            hidden = self.network.decode(states, mask, vectors, folded=True)[:, 0]  # (B, L, d)
            for level in range(levels):
                forced[rows, level] = self.network.level_logits(hidden[:, level], level).argmax(-1).cpu().numpy()
            chosen = torch.zeros(len(rows), 0, dtype=torch.int64, device=self.device)  # (B, t)
            for level in range(levels):
                vectors = self.network.embed_codes(chosen)[:, None]  # (B, 1, t, d)
                h = self.network.decode(states, mask, vectors, folded=True)[:, 0, level]  # (B, d)
                code = self.network.level_logits(h, level).argmax(-1)  # (B,)
                chosen = torch.cat([chosen, code[:, None]], dim=1)
            greedy[rows] = chosen.cpu().numpy()
        return greedy, forced

    @torch.no_grad()
    def teacher_forced_agreement(self, rows: Sequence[int] | None = None) -> float:
        """Fraction of documents `rows` (None = all) whose L teacher-forced codes all equal the table's."""
        self.model.eval()
        rows = np.arange(len(self.corpus)) if rows is None else np.asarray(rows)
        levels = self.config.num_levels
        same = 0
        for start in range(0, len(rows), self.config.eval_batch_size):
            batch = self.batch(rows[start : start + self.config.eval_batch_size], levels)
            _, _, hidden = self.model.hidden(batch.rows, batch.earlier[:, : levels - 1])  # (B, L, d)
            forced = torch.stack([self.network.level_logits(hidden[:, j], j).argmax(-1) for j in range(levels)], 1)
            same += int((forced.cpu().numpy() == batch.earlier).all(axis=1).sum())
        return same / max(1, len(rows))

    @torch.no_grad()
    def level_logits(self, level: int) -> np.ndarray:
        """(N, K) logits h^level . E^level of every document at `level` (earlier codes teacher-forced)."""
        hidden = torch.from_numpy(self.hidden_states(level)).to(self.device)
        return self.network.level_logits(hidden, level).cpu().numpy()

    def assign(self, level: int) -> np.ndarray:
        """c_level = argmax h^level . E^level for every document."""
        return self.level_logits(level).argmax(axis=-1).astype(np.int64)

    def run(self) -> dict[str, Any]:
        """The whole schedule; fills self.codes and self.diagnostics."""
        config = self.config
        started = time.perf_counter()
        key = state_cache_key(self.texts, config, self.encoder_states.frozen_layers)
        self.encoder_states.build_cache(self.corpus, config.eval_batch_size, self.device,
                                        key if self.context.is_main else None,
                                        config.progress and self.context.is_main)
        self.diagnostics["encoder_states_seconds"] = round(time.perf_counter() - started, 2)
        self.diagnostics["stages"].append(self.run_stage(StageSpec(0, "warmup", 0.0, False, False),
                                                         config.warmup_epochs))
        for level in range(config.num_levels):
            p = config.per_level(config.hint_mask_probs, level)
            level_record: dict[str, Any] = {"level": level, "hint_mask_prob": p}
            nocode = StageSpec(level, "nocode", p, True, level > 0)
            self.diagnostics["stages"].append(self.run_stage(nocode, config.per_level(config.nocode_epochs, level)))
            full = StageSpec(level, "full", p, True, level > 0)
            if finished(self.checkpoint_dir / full.name):
                level_record["kmeans"] = "skipped: the full stage's checkpoint is complete and holds the codebook"
            else:
                level_record.update(self.init_codebook(level))
            self.diagnostics["stages"].append(self.run_stage(full, config.per_level(config.full_epochs, level)))
            logits = self.level_logits(level)  # (N, K): one pass over the corpus serves both assignments
            self.codes[:, level] = logits.argmax(axis=-1)
            if level == config.num_levels - 1 and level > 0 and config.last_level_assignment == "distinct":
                distinct = distinct_within_prefix(self.codes[:, :level], logits)
                level_record["distinct_assignment_changed"] = float((distinct != self.codes[:, level]).mean())
                self.codes[:, level] = distinct
            level_record.update(self._level_figures(level, full))
            self.diagnostics["levels"].append(level_record)
            logger.info("level %d: %s", level, level_record)
        if config.consolidate_epochs > 0:
            spec = StageSpec(config.num_levels, "consolidate", 0.0, False, True)
            before = self.teacher_forced_agreement()
            record = self.run_stage(spec, config.consolidate_epochs)
            record["teacher_forced_agreement_before"] = before
            record["teacher_forced_agreement_after"] = self.teacher_forced_agreement()
            self.diagnostics["stages"].append(record)
            logger.info("consolidation: teacher-forced agreement with the table %.3f -> %.3f", before,
                        record["teacher_forced_agreement_after"])
        # Training a later level moves the network under the earlier codes (L_commitment only resists it),
        # and each level was assigned with the codes before it teacher-forced. The final network is what
        # assigns IDs to new documents and what fine-tuning starts from, so the table is re-assigned from
        # it by greedy assignment: the IDs written are the ones the network gives the same text.
        greedy, forced = self.greedy_reassignment()
        changed = greedy != self.codes  # (N, L)
        for level, record in enumerate(self.diagnostics["levels"]):
            record["teacher_forced_agreement"] = float((forced[:, level] == self.codes[:, level]).mean())
            record["reassigned"] = float(changed[:, level].mean())
        self.diagnostics["reassignment"] = {
            "changed_documents": float(changed.any(axis=1).mean()),
            "changed_per_level": [float(c) for c in changed.mean(axis=0)],
        }
        logger.info("greedy re-assignment from the final network changed the codes of %.1f%% of the documents",
                    100 * self.diagnostics["reassignment"]["changed_documents"])
        self.codes = greedy
        self.diagnostics["seconds"] = round(time.perf_counter() - started, 2)
        return self.diagnostics

    def _level_figures(self, level: int, spec: StageSpec) -> dict[str, Any]:
        codes = self.codes[:, level]
        used = len(np.unique(codes))
        figures: dict[str, Any] = {
            "perplexity": code_perplexity(codes),
            "codes_used": used,
            "usage": used / self.config.codebook_size,
            "diff_ratio": same_prefix_diff_ratio(self.codes[:, : level + 1], level),
        }
        dev = self.dev_reconstruction(spec)
        figures["reconstruction_accuracy"] = dev.get("dev_recon_accuracy")
        figures["reconstruction_loss"] = dev.get("dev_recon_loss")
        if self.labels is not None:
            figures["category_ami"] = _ami(self.codes[:, :level], codes, self.labels)
        return figures

    def save(self, out_dir: Path) -> dict[str, str]:
        """network/ (SemanticIdNetwork.save), reconstructor.safetensors, lmindexer.json."""
        out_dir = Path(out_dir)
        self.network.save(out_dir / NETWORK_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.reconstructor.state_dict().items()}
        save_file(state, str(out_dir / RECONSTRUCTOR_FILE))
        self.write_record(out_dir)
        return {"network": f"{NETWORK_DIR}/model.safetensors", "network_config": f"{NETWORK_DIR}/network.json",
                "reconstructor": RECONSTRUCTOR_FILE, "config": CONFIG_FILE}

    def write_record(self, out_dir: Path) -> None:
        """lmindexer.json: the config, the diagnostics and (once written) the item vectors' record."""
        payload: dict[str, Any] = {"config": config_to_dict(self.config),
                                   "output_vocabulary_size": len(self.corpus.vocab_ids),
                                   "diagnostics": self.diagnostics}
        if self.item_vectors is not None:
            payload[RECORD_KEY] = self.item_vectors
        (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(payload, indent=2, default=_json_default))


def distinct_within_prefix(prefixes: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Codes (N,) for one level: within each group of documents with equal `prefixes` (N, l) rows, an optimal
    assignment of the level's K codes maximising the summed `logits` (N, K), each code taken by at most
    ceil(group / K) documents (so distinct codes while the group has at most K documents). Deterministic:
    groups in the order of their first document, scipy.optimize.linear_sum_assignment within a group."""
    codes = np.asarray(logits).argmax(axis=1).astype(np.int64)
    _, group_of = np.unique(np.asarray(prefixes).reshape(len(codes), -1), axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)  # (N,) group index (numpy 2 may return it with the input's rank)
    order = np.argsort(group_of, kind="stable")
    bounds = np.flatnonzero(np.diff(group_of[order])) + 1
    num_codes = logits.shape[1]
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        copies = -(-len(members) // num_codes)  # ceil: each code offered this many times
        cost = -np.tile(np.asarray(logits[members], dtype=np.float64), (1, copies))  # (g, K * copies)
        rows, columns = linear_sum_assignment(cost)
        codes[members[rows]] = columns % num_codes
    return codes


def prefix_residuals(data: np.ndarray, prefixes: np.ndarray, earlier_codebooks: np.ndarray,
                     projection: str = "codebooks") -> tuple[np.ndarray, np.ndarray | None]:
    """What the k-means of level t >= 1 clusters (`residual_kmeans`): within-prefix residuals of h^t.

    data (N, d): h^t of every document (unit length with kmeans_normalize); prefixes (N, t): the codes
    assigned at levels 0..t-1; earlier_codebooks (r, d): the rows of E^0..E^{t-1}.
    Returns (residuals (N, d) float64, basis): each row minus the mean of the rows sharing its prefix,
    then projected off a subspace (basis (d, r) orthonormal, or None for none) that the new codebook is also
    kept off (init_codebook): with projection 'codebooks' the span of the earlier codebooks when r < d; with
    'prefix_means' the top directions of the prefix means (weighted by prefix size; the fewest that hold
    99.9% of their energy, at most d / 2).

    Why: h^t starts close to h^{t-1} (the prefix code dominates it), so k-means on h^t itself re-finds the
    previous partition and most siblings land on one code; the residual is what tells siblings apart, so
    the level's K codes are spent inside prefixes (the RK-means / rq-VAE rule in h-space). Codes are
    argmax h . e: keeping e off the earlier codebooks' span stops the part of h^t that the prefix code
    vectors carry from picking the code.
    """
    data = np.asarray(data, dtype=np.float64)
    groups = np.unique(np.asarray(prefixes), axis=0, return_inverse=True)[1].reshape(-1)  # (N,)
    means = np.zeros((groups.max() + 1, data.shape[1]))
    np.add.at(means, groups, data)
    means /= np.bincount(groups)[:, None]
    residuals = data - means[groups]
    basis = None
    if projection == "prefix_means":
        # h^t = (prefix mean) + (residual) with the mean ~all of |h^t|: argmax h . e must not see the mean
        weighted = means * np.sqrt(np.bincount(groups))[:, None]  # (P, d)
        _, singular, directions = np.linalg.svd(weighted, full_matrices=False)
        energy = np.cumsum(singular**2) / max(float((singular**2).sum()), 1e-300)
        rank = min(int(np.searchsorted(energy, 0.999)) + 1, data.shape[1] // 2)
        basis = directions[:rank].T  # (d, rank) orthonormal
    elif earlier_codebooks.shape[0] < data.shape[1]:
        basis = np.linalg.qr(np.asarray(earlier_codebooks, dtype=np.float64).T)[0]  # (d, r) orthonormal
    if basis is not None:
        residuals = residuals - (residuals @ basis) @ basis.T
    return residuals, basis


@torch.no_grad()
def final_network_pass(network_dir: Path, texts: Sequence[str], codes: np.ndarray, config: LMIndexerConfig,
                       device: torch.device, agreement_documents: int = 0, show_progress: bool = False,
                       frozen_states: Sequence[torch.Tensor] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """One pass of the saved network (loaded from `network_dir`) over every document: the agreement of its
    greedy codes with the written codes (N, L) on the first documents, and every document's text vector.

    The network's own path, independent of the indexer's: SemanticIdNetwork.load, the whole encoder
    (no cached states), unfolded cross-attention, `decoder_step` level by level with W = 1 (what export
    and cold start run). Agreement: over the first `agreement_documents` documents (0 = all), the fraction
    whose L codes all equal the written ones (`final_network_agreement`), per level, and the number of
    documents checked; those documents are batched as they always were (longest first, among themselves).
    Text vectors (N, D) float32, row i = texts[i]: the encoder states of the same pass, mean-pooled over
    the attention mask and L2-normalised (what `training.encoder.embed_texts` computes, which the
    recommender's text vectors come from); the documents not checked are encoded after the checked ones.

    frozen_states: when the whole encoder was frozen (train_encoder_layers = 0), the indexer's cached
    encoder output, one (S_i, d) float32 tensor per document: the saved encoder's weights are the ones
    that computed them, so the pass reads them instead of running the encoder again (on all 12,101
    Beauty items, 1 thread: about 3.5 minutes saved); the decoder is still the saved network's."""
    network = SemanticIdNetwork.load(network_dir).to(device).eval()
    corpus = tokenize_corpus(texts, config)
    n = len(corpus)
    checked = min(agreement_documents, n) if agreement_documents > 0 else n
    levels = codes.shape[1]
    greedy = np.zeros_like(codes[:checked])
    vectors = np.zeros((n, network.hidden_size), dtype=np.float32)
    lengths = np.asarray([len(r) for r in corpus.input_ids])
    size = config.eval_batch_size
    batches = [(order[start : start + size], decode)
               for order, decode in ((np.argsort(-lengths[:checked], kind="stable"), True),
                                     (checked + np.argsort(-lengths[checked:], kind="stable"), False))
               for start in range(0, len(order), size)]
    for rows, decode in progress_bar(batches, desc="final network", unit="batch", disable=not show_progress,
                                     mininterval=2.0):
        ids = pad_rows([corpus.input_ids[i] for i in rows], corpus.pad_id).to(device)
        mask = pad_rows([torch.ones_like(corpus.input_ids[i]) for i in rows], 0).to(device)
        if frozen_states is None:
            states = network.encode(ids, mask)  # (B, S, d)
        else:
            states = pad_rows([frozen_states[i] for i in rows], 0.0).to(device=device, dtype=torch.float32)
        vectors[rows] = F.normalize(mean_pool(states, mask), dim=-1).float().cpu().numpy()
        if not decode:
            continue
        chosen = torch.zeros(len(rows), 1, levels, dtype=torch.int64, device=device)  # (B, W=1, L)
        for level in range(levels):
            log_probs = network.decoder_step(states, mask, chosen, torch.tensor(level, device=device))  # (B, 1, V)
            chosen[:, 0, level] = log_probs[:, 0, : config.codebook_size].argmax(-1)
        greedy[rows] = chosen[:, 0].cpu().numpy()
    same = greedy == codes[:checked]  # (n checked, L)
    agreement = {"final_network_agreement": float(same.all(axis=1).mean()),
                 "per_level": [float(v) for v in same.mean(axis=0)], "documents": checked}
    return agreement, vectors


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _ami(prefix: np.ndarray, codes: np.ndarray, labels: Sequence[str | None]) -> float | None:
    """AMI between (prefix, code) clusters and the labels, over labelled documents (a monitor only:
    the labels never reach training)."""
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) < 2:
        return None
    clusters = [",".join(map(str, prefix[i])) + f"|{codes[i]}" for i in keep]
    return float(adjusted_mutual_info_score([labels[i] for i in keep], clusters))


def learn_lmindexer_codes(documents: list[Document], config: LMIndexerConfig, out_dir: Path) -> LearnedCodes:
    """Learn L levels of codes for `documents` with the LMIndexer schedule (the method contract of
    training.indexing.learning); writes the network, reconstructor and config under `out_dir`."""
    library_bars(config.progress)
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    context = distributed_context(config.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    indexer = LMIndexer([doc.text for doc in documents], config, out_dir, context)
    categories = [doc.category for doc in documents]
    if any(c is not None for c in categories):
        indexer.labels = categories  # monitoring only (category AMI in the diagnostics)
    diagnostics = indexer.run()
    files = indexer.save(out_dir) if context.is_main else {}
    if context.is_main:
        pass_started = time.perf_counter()
        states = indexer.encoder_states
        whole_encoder_frozen = states.frozen_layers is not None and not states.top_layers and states.cache is not None
        agreement, vectors = final_network_pass(out_dir / NETWORK_DIR, indexer.texts, indexer.codes, config,
                                                indexer.device, config.agreement_documents, config.progress,
                                                frozen_states=states.cache if whole_encoder_frozen else None)
        pass_seconds = time.perf_counter() - pass_started
        diagnostics["final_network_agreement"] = agreement["final_network_agreement"]
        diagnostics["final_network_agreement_documents"] = agreement["documents"]
        diagnostics["final_network_pass_seconds"] = round(pass_seconds, 2)
        for record, value in zip(diagnostics["levels"], agreement["per_level"], strict=True):
            record["final_network_agreement"] = value
        logger.info("saved network: greedy codes equal the written IDs for %.2f%% of %d documents; text vectors of "
                    "all %d documents kept (%.1f s)", 100 * agreement["final_network_agreement"],
                    agreement["documents"], len(vectors), pass_seconds)
        files["item_vectors"] = write_item_vectors(out_dir, vectors)
        indexer.item_vectors = item_vectors_record(vectors, indexer.texts, out_dir / NETWORK_DIR, config.encoder,
                                                   config.max_length, pass_seconds)
        indexer.write_record(out_dir)  # lmindexer.json with the agreement and the vectors' record
    diagnostics["wall_seconds"] = round(time.perf_counter() - started, 2)
    return LearnedCodes(codes=indexer.codes.copy(), codebook_sizes=(config.codebook_size,) * config.num_levels,
                        diagnostics=diagnostics, files=files)
