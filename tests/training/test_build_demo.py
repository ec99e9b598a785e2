"""build-demo: presets, the Beauty subset, and a whole (small, HC-ID) demo bundle end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle import Bundle
from lmindexer.cli import main
from training.config import load_config, preset_path
from training.downstream.demo import beauty_subset, load_demo_config
from training.downstream.finetune import FinetuneConfig
from training.recommendation.settings import RecommenderSettings


@pytest.mark.parametrize("preset", ["tiny", "quick", "integration"])
def test_demo_presets_and_the_finetune_presets_they_name_load(preset: str) -> None:
    config = load_demo_config(preset)
    assert config.ids_method == "lmindexer"
    assert config.parity_inputs == 100
    finetune = load_config(FinetuneConfig, preset_path("finetune", config.retriever_preset),
                           list(config.retriever_overrides))
    assert finetune.steps >= 1
    recommender = load_config(RecommenderSettings, preset_path("recommender", config.recommender_preset),
                              list(config.recommender_overrides))
    assert recommender.max_epochs >= 1


def test_the_subset_keeps_popular_items_and_users_with_three_of_them() -> None:
    dataset = beauty_subset(num_items=60, max_users=200)
    assert 0 < len(dataset.items) <= 60
    assert 0 < len(dataset.sequences) <= 200
    for user in dataset.sequences:
        assert len(user.items) >= 3
        assert set(user.items) <= set(dataset.items)
    used = {a for user in dataset.sequences for a in user.items}
    assert used == set(dataset.items)  # no item without a user


@pytest.mark.slow
def test_build_demo_writes_a_working_bundle(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    status = main(["build-demo", "--out", str(out), "--preset", "tiny", "--no-progress",
                   # HC IDs keep this test quick; the preset's LMIndexer-only overrides do not apply to them.
                   "--set", "ids_method=\"hc\"", "--set", "ids_overrides=[]",
                   "--set", "num_items=40", "--set", "max_users=60",
                   "--set", "parity_inputs=10", "--set", "eval_queries=5", "--set", "dev_queries=8",
                   "--set", "retriever_overrides=[\"steps=4\"]", "--set", "recommender_overrides=[\"max_epochs=2\"]"])
    assert status == 0
    assert "bundle" in capsys.readouterr().out
    bundle = Bundle.open(out)  # strict: every key, every named file
    manifest = bundle.manifest
    assert set(manifest.models) == {"indexer", "retriever", "recommender"}
    assert len(bundle.documents()) == manifest.num_documents > 0
    assert manifest.training_config["ids"]["method"] == "hc"
    for name, entry in manifest.models.items():
        assert entry.parity is not None and entry.parity.top_k_identical and entry.parity.max_abs_diff <= 1e-4
        assert bool(entry.evaluation) == (name != "indexer")
    # The recommender is the item-token one, served with the settings it was trained with (the tiny preset's);
    # HC IDs came from a pretrained encoder's vectors, so the bundle carries that encoder for new items.
    recommender = load_config(RecommenderSettings, preset_path("recommender", "tiny"), ["max_epochs=2"])
    entry = manifest.models["recommender"]
    assert entry.kind == "item_token_recommender" and entry.max_history == recommender.max_history
    vectors = manifest.item_vectors
    assert vectors is not None and vectors.source == "text_encoder" and vectors.max_abs_diff <= 1e-3
    assert entry.default_mode in ("generative", "hybrid") and "valid" in entry.evaluation
    # The retriever's search modes were chosen on the development titles, and test was scored with that weight.
    retriever = manifest.models["retriever"]
    search, evaluation = retriever.search, retriever.evaluation
    assert search is not None and search.chosen_on == "beauty-titles valid split: 8 queries, NDCG@10"
    assert search.hybrid_weight == evaluation["hybrid_weight"] and search.default_mode == evaluation["default_mode"]
    assert evaluation["valid"]["queries"] == 8 and evaluation["test"]["queries"] == 5
    assert set(evaluation["test"]["hybrid"]) == {"all", "warm", "cold"} and "dense" in evaluation["test"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # work files removed
