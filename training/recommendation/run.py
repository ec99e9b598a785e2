"""Train the item-token recommender through the project's one loop (`training.loop.train`) and save it.

`fit` reads a P5-format dataset by path and an ID source (a `learn-ids` output), builds the
catalogue (text vectors from the ID source's encoder), trains with the loss at every position
(`objective`), evaluates after every epoch on a seeded sample of validation users (`eval_users`)
and stops early on the validation NDCG@10 of `eval_ranking`. The best epoch's weights are kept.

The model directory (`--out`):

- `recommender.json`: the settings, the data and ID paths, the codebook sizes, the text encoder
  description, the cold-start items, the training history and its wall time, the machine's load;
- `model.safetensors`: the weights;
- `items.npz`: the catalogue (doc_ids, text vectors, semantic IDs, codebook sizes): what the
  model reads for every item, and what an export puts into the bundle;
- `train/checkpoint.pt`: the loop's checkpoint (a re-run resumes; a finished run returns at once).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.baselines.recommendation import machine_description
from training.config import config_to_dict
from training.downstream.tasks import load_id_source
from training.loop import LoopSettings, shard
from training.loop import train as train_loop
from training.progress import library_bars
from training.recommendation.data import RecommendationData, build_data, load_dataset
from training.recommendation.evaluate import choose_hybrid_weight, ranking_metrics, score_users
from training.recommendation.items import ItemCatalogue
from training.recommendation.model import Recommender
from training.recommendation.objective import CatalogueTensors, make_loss_fn
from training.recommendation.settings import RecommenderSettings

logger = logging.getLogger(__name__)

RECORD_FILE = "recommender.json"
WEIGHTS_FILE = "model.safetensors"
ITEMS_FILE = "items.npz"


@dataclass(frozen=True)
class SequenceBatch:
    """items, targets (B, W) left-padded item indices (0 = padding); len() is B, the user sequences."""

    items: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.items.shape[0])


def loop_settings(settings: RecommenderSettings, progress: bool = True) -> LoopSettings:
    """The loop's settings from the recommender's: AdamW, warm-up and linear decay over max_epochs,
    early stopping on the validation NDCG@10 of `eval_ranking`."""
    return LoopSettings(epochs=settings.max_epochs, lr=settings.lr, weight_decay=settings.weight_decay,
                        warmup_steps=settings.warmup_steps, grad_clip=settings.grad_clip, seed=settings.seed,
                        metric="ndcg@10", higher_is_better=True, patience=settings.patience,
                        time_budget_s=settings.time_budget_s, progress=progress, device="cpu")


def validation_sample(num_users: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of `size` user positions (all users when size is 0 or larger), sorted."""
    if not size or size >= num_users:
        return np.arange(num_users)
    return np.sort(np.random.default_rng(seed).choice(num_users, size, replace=False))


def init_from_indexer(model: Recommender, source_network_dir: Path | None, text_dim: int) -> bool:
    """Initialise the code embeddings from the indexer's codebooks when they live in the text vectors'
    space (LMIndexer); returns whether it did."""
    if source_network_dir is None:
        return False
    from safetensors.torch import load_file

    codebooks = load_file(str(source_network_dir / "model.safetensors")).get("codebooks")  # (L, K, D)
    if codebooks is None or codebooks.shape[-1] != text_dim:
        return False
    model.init_code_embeddings(codebooks.float())
    return True


def fit(items_path: Path, sequences_path: Path, ids_dir: Path, settings: RecommenderSettings, out_dir: Path,
        progress: bool = True) -> dict[str, Any]:
    """Train and save a recommender (module docstring). Returns the record written to recommender.json."""
    started = time.perf_counter()
    library_bars(progress)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = load_id_source(ids_dir)
    dataset = load_dataset(items_path, sequences_path)
    data = build_data(dataset, source, settings.max_history, settings.cold_start_fraction, settings.seed)
    catalogue = data.catalogue
    model = Recommender(catalogue.text_dim, catalogue.codebook_sizes, settings, catalogue.num_items)
    initialised = settings.code_init == "codebooks" and init_from_indexer(model, source.network_dir,
                                                                           catalogue.text_dim)
    tables = CatalogueTensors(catalogue, data.cold)
    loss_fn = make_loss_fn(tables, settings, torch.Generator().manual_seed(settings.seed))
    trie = catalogue.trie()
    sample = validation_sample(data.arrays.num_users, settings.eval_users, settings.seed)
    histories = [data.arrays.valid_histories[i] for i in sample]
    targets = data.arrays.valid_targets[sample]

    def loss(model: Recommender, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_fn(model, {"items": batch.items, "targets": batch.targets})

    def batches(epoch: int, rank: int, world_size: int) -> list[SequenceBatch]:
        rng = np.random.default_rng([settings.seed, epoch])
        out = []
        for idx in data.batches(settings.batch_size, rng):
            width = int(data.train_lengths[idx].max())
            out.append(SequenceBatch(torch.from_numpy(data.train_inputs[idx, -width:]),
                                     torch.from_numpy(data.train_targets[idx, -width:])))
        return shard(out, rank, world_size)

    def evaluate(model: Recommender) -> dict[str, float]:
        scored = score_users(model, tables, catalogue, trie, histories, targets, settings.beam_size,
                             settings.exclude_history, settings.eval_batch_size)
        weight, _ = choose_hybrid_weight(scored, settings.hybrid_weights)
        figures = ranking_metrics(scored, weight)
        out = {"ndcg@10": figures[settings.eval_ranking]["ndcg@10"], "hybrid_weight": weight}
        for ranking, values in figures.items():
            out.update({f"{ranking}_{k}": v for k, v in values.items()})
        return out

    logger.info("recommender: %d parameters; %d validation users for early stopping (%s NDCG@10)",
                model.num_parameters, len(sample), settings.eval_ranking)
    result = train_loop(model, loop_settings(settings, progress), batches, loss, out_dir / "train",
                        evaluate=evaluate, name="recommender")
    if model.item_embedding is not None:
        with torch.no_grad():  # cold items stand for items added later: they have no item ID embedding
            model.item_embedding.weight[torch.from_numpy(np.flatnonzero(data.cold))] = 0.0
    save_model(out_dir, model, catalogue)
    record = {
        "task": "recommendation",
        "settings": config_to_dict(settings),
        "items_path": str(Path(items_path).resolve()),
        "sequences_path": str(Path(sequences_path).resolve()),
        "ids": str(Path(ids_dir).resolve()),
        "ids_method": source.method,
        "codebook_sizes": list(catalogue.codebook_sizes),
        "text_dim": catalogue.text_dim,
        "text_encoder": data.encoder,
        "code_embeddings_from_codebooks": initialised,
        "num_items": catalogue.num_items,
        "num_users": data.arrays.num_users,
        "cold_items": [catalogue.doc_ids[i - 1] for i in np.flatnonzero(data.cold)],
        "cold_start_rule": "a seeded cold_start_fraction of the items is removed from every training sequence "
                           "and from the dense softmax; their learned codes are the ID table's and their "
                           "counter the next free one among the warm items (the service's rule, "
                           "training.recommendation.data.index_cold_items)",
        "num_parameters": model.num_parameters,
        "training": {"epochs": result.epochs, "best_epoch": result.best_epoch, "best_valid_ndcg@10": result.best,
                     "stop_reason": result.stop_reason, "steps": result.steps, "history": result.history,
                     "seconds": round(result.seconds, 1), "validation_users": len(sample)},
        "train_seconds": round(time.perf_counter() - started, 1),
        "machine": {**machine_description(), "load_average_at_start": load_at_start},
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def save_model(out_dir: Path, model: Recommender, catalogue: ItemCatalogue) -> None:
    """Write the weights and the catalogue (module docstring)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    np.savez(out_dir / ITEMS_FILE, doc_ids=np.asarray(catalogue.doc_ids), vectors=catalogue.vectors,
             semantic_ids=catalogue.semantic_ids, codebook_sizes=np.asarray(catalogue.codebook_sizes))


def load_model(model_dir: Path) -> tuple[dict[str, Any], RecommenderSettings, Recommender, ItemCatalogue]:
    """(record, settings, model in eval mode, catalogue) of a `fit` output directory."""
    from safetensors.torch import load_file

    from training.config import build_config

    model_dir = Path(model_dir)
    record = json.loads((model_dir / RECORD_FILE).read_text(encoding="utf-8"))
    settings = build_config(RecommenderSettings, record["settings"], source=str(model_dir / RECORD_FILE))
    with np.load(model_dir / ITEMS_FILE) as items:
        catalogue = ItemCatalogue(tuple(str(d) for d in items["doc_ids"]), items["vectors"],
                                  items["semantic_ids"], tuple(int(k) for k in items["codebook_sizes"]))
    model = Recommender(catalogue.text_dim, catalogue.codebook_sizes, settings, catalogue.num_items)
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
    return record, settings, model.eval(), catalogue


def training_data(record: dict[str, Any], settings: RecommenderSettings) -> RecommendationData:
    """The data of a saved model's run (same files, IDs and cold items)."""
    source = load_id_source(record["ids"])
    dataset = load_dataset(Path(record["items_path"]), Path(record["sequences_path"]))
    return build_data(dataset, source, settings.max_history, settings.cold_start_fraction, settings.seed)


def evaluate_model(model_dir: Path, splits: tuple[str, ...] = ("valid", "test"), beam_size: int | None = None,
                   max_users: int = 0) -> dict[str, Any]:
    """Score a saved model on validation and (if in `splits`) test under both rankings; write
    `model_dir/eval/metrics.json`.

    The hybrid weight is chosen on the validation split (all of its users, or the `max_users`
    sample) and applied unchanged to test. Figures for all users, and separately for the users
    whose target is a warm or a cold item. Returns the JSON object written.
    """
    started = time.perf_counter()
    model_dir = Path(model_dir)
    record, settings, model, catalogue = load_model(model_dir)
    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    beam = beam_size or settings.beam_size
    data = training_data(record, settings)
    if data.catalogue.doc_ids != catalogue.doc_ids:
        raise ValueError(f"{model_dir}: the items file no longer matches the saved catalogue")
    tables = CatalogueTensors(catalogue, data.cold)
    trie = catalogue.trie()
    sample = validation_sample(data.arrays.num_users, max_users, settings.seed)
    results: dict[str, Any] = {"beam_size": beam, "exclude_history": settings.exclude_history, "users": len(sample),
                               "hybrid_rule": "(1 - w) * generative log-prob + w * dense log-prob over the beam's "
                                              "candidates; w chosen on validation NDCG@10"}
    weight = 0.0
    # validation always runs first: it chooses the hybrid weight that test then uses
    for split in ("valid", *(["test"] if "test" in splits else [])):
        histories = data.arrays.valid_histories if split == "valid" else data.arrays.test_histories
        targets = data.arrays.valid_targets if split == "valid" else data.arrays.test_targets
        t0 = time.perf_counter()
        scored = score_users(model, tables, catalogue, trie, [histories[i] for i in sample], targets[sample], beam,
                             settings.exclude_history, settings.eval_batch_size)
        if split == "valid":
            weight, by_weight = choose_hybrid_weight(scored, settings.hybrid_weights)
            results["hybrid_weight"] = weight
            results["valid_ndcg@10_by_hybrid_weight"] = by_weight
        cold = data.cold_users(split)[sample]
        results[split] = {"all": ranking_metrics(scored, weight),
                          "warm": ranking_metrics(scored.subset(~cold), weight) if (~cold).any() else None,
                          "cold": ranking_metrics(scored.subset(cold), weight) if cold.any() else None,
                          "warm_users": int((~cold).sum()), "cold_users": int(cold.sum()),
                          "beam_recall": float((scored.rows == scored.targets[:, None]).any(axis=1).mean()),
                          "seconds": round(time.perf_counter() - t0, 1)}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = machine_description()
    out = model_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
