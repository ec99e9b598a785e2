"""build-demo: presets, the Beauty subset, and a whole (small, HC-ID) demo bundle end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]) == {"indexer", "retriever", "recommender"}
    for spec in manifest["models"].values():
        assert (out / spec["encoder"]).is_file() and (out / spec["decoder_step"]).is_file()
    lines = (out / "documents.jsonl").read_text().splitlines()
    assert len(lines) == manifest["num_documents"] > 0
    assert manifest["training_config"]["ids"]["method"] == "hc"
    assert all(p["top10_identical"] and p["max_abs_diff"] <= 1e-4 for p in manifest["onnx_parity"].values())
    assert set(manifest["evaluation"]) == {"retriever", "recommender"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # work files removed
