"""build-demo: presets, the Beauty subset, and a whole (small, HC-ID) demo bundle end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle import Bundle
from lmindexer.cli import main
from training.config import load_config, preset_path
from training.downstream.demo import beauty_subset, load_demo_config
from training.downstream.finetune import FinetuneConfig


@pytest.mark.parametrize("preset", ["tiny", "quick", "integration"])
def test_demo_presets_and_the_finetune_presets_they_name_load(preset: str) -> None:
    config = load_demo_config(preset)
    assert config.ids_method == "lmindexer"
    assert config.parity_inputs == 100
    for name, overrides in ((config.retriever_preset, config.retriever_overrides),
                            (config.recommender_preset, config.recommender_overrides)):
        finetune = load_config(FinetuneConfig, preset_path("finetune", name), list(overrides))
        assert finetune.steps >= 1


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
                   "--set", "parity_inputs=10", "--set", "eval_queries=5",
                   "--set", "retriever_overrides=[\"steps=4\"]", "--set", "recommender_overrides=[\"steps=4\"]"])
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
    # The recommender is served with the input settings it was fine-tuned with (the tiny preset's).
    recommender = load_config(FinetuneConfig, preset_path("finetune", "tiny"), ["steps=4"])
    assert manifest.models["recommender"].max_input_length == recommender.max_input_length
    assert manifest.models["recommender"].history.max_items == recommender.max_history
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # work files removed
