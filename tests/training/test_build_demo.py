"""build-demo: presets, the Beauty subset, and whole (small, HC-ID) demo bundles end to end: interrupted and
resumed, rebuilt after a setting changed, with held-out items."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bundle import Bundle
from lmindexer.cli import main
from training.config import load_config, preset_path
from training.data.amazon import items_as_documents, load_amazon
from training.downstream.demo import STAGES, beauty_subset, load_demo_config
from training.downstream.export import document_metadata
from training.downstream.finetune import FinetuneConfig
from training.downstream.stages import MARKER_FILE, STARTED_FILE
from training.indexing.learning import load_method_config
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
    assert set(config.typical_seconds()) == set(STAGES)  # every stage has an ETA
    ids = load_method_config(config.ids_method, config.ids_preset, list(config.ids_overrides))
    assert ids.num_threads == 1  # two builds give the same IDs (module docstring of training.downstream.demo)


def test_the_quick_preset_is_the_whole_catalogue() -> None:
    config = load_demo_config("quick")
    assert (config.num_items, config.max_users, config.holdout_items) == (0, 0, 0)
    assert (config.ids_preset, config.retriever_preset, config.recommender_preset) == ("cpu", "quick", "cpu")
    ids = load_method_config("lmindexer", "cpu", list(config.ids_overrides))
    assert (ids.num_levels, ids.codebook_size, ids.train_encoder_layers) == (3, 256, 0)
    dataset = beauty_subset(config.num_items, config.max_users)  # 0 = every item, every user
    assert (len(dataset.items), len(dataset.sequences)) == (12_101, 22_363)


def test_the_subset_keeps_popular_items_and_users_with_three_of_them() -> None:
    dataset = beauty_subset(num_items=60, max_users=200)
    assert 0 < len(dataset.items) <= 60
    assert 0 < len(dataset.sequences) <= 200
    for user in dataset.sequences:
        assert len(user.items) >= 3
        assert set(user.items) <= set(dataset.items)
    used = {a for user in dataset.sequences for a in user.items}
    assert used == set(dataset.items)  # no item without a user
    # held-out items are in no sequence; users left with fewer than 3 items are dropped
    held_out = sorted(dataset.items)[:5]
    without = beauty_subset(num_items=60, max_users=0, holdout=held_out)
    assert not set(held_out) & set(without.items)
    assert all(len(u.items) >= 3 and not set(u.items) & set(held_out) for u in without.sequences)


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
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # the work directory removed, no held-out file
    assert set(manifest.training_config["wall_seconds"]) == set(STAGES)
    figures = manifest.training_config["ids"]["figures"]  # the IDs' quality figures travel with the bundle
    collisions = figures["collisions"]
    assert 0.0 <= collisions["collision_rate"] <= 1.0 and collisions["largest_collision_group"] >= 1
    assert len(figures["levels"]) == manifest.semantic_ids.num_levels
    assert manifest.training_config["build"]["stages"] == dict.fromkeys(STAGES, "run")


# A small HC-ID build (the tiny preset, smaller still): each whole build is about 30 s.
SMALL = ["--preset", "tiny", "--no-progress", "--set", "ids_method=\"hc\"", "--set", "ids_overrides=[]",
         "--set", "num_items=40", "--set", "max_users=60", "--set", "parity_inputs=10", "--set", "eval_queries=5",
         "--set", "retriever_overrides=[\"steps=4\"]", "--set", "recommender_overrides=[\"max_epochs=2\"]",
         "--set", "holdout_items=3", "--keep-work"]


def _markers(work: Path) -> dict[str, Any]:
    return {stage: json.loads((work / stage / MARKER_FILE).read_text())
            for stage in STAGES if (work / stage / MARKER_FILE).is_file()}


@pytest.fixture(scope="module")
def resumed_build(tmp_path_factory) -> dict[str, Any]:
    """A build interrupted in the recommender's stage (after its training loop had finished, before its model
    was saved), then the same command again."""
    from training.recommendation import run as recommendation_run

    root = tmp_path_factory.mktemp("build")
    out, work = root / "demo", root / "demo.work"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated interruption")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recommendation_run, "save_model", interrupted)
        with pytest.raises(RuntimeError, match="simulated interruption"):
            main(["build-demo", "--out", str(out), *SMALL])
    first = {"markers": _markers(work), "out_exists": out.exists(),
             "recommender_started": (work / "recommender" / STARTED_FILE).is_file(),
             "checkpoint": (work / "recommender" / "model" / "train" / "checkpoint.pt").is_file()}
    assert main(["build-demo", "--out", str(out), *SMALL]) == 0
    return {"out": out, "work": work, "root": root, "first": first, "markers": _markers(work),
            "manifest": Bundle.open(out).manifest,
            "recommender": json.loads((work / "recommender" / "model" / "recommender.json").read_text())}


@pytest.mark.slow
def test_an_interrupted_build_continues_where_it_stopped(resumed_build) -> None:
    first = resumed_build["first"]
    assert set(first["markers"]) == {"data", "learn_ids", "retriever"} and not first["out_exists"]
    assert first["recommender_started"] and first["checkpoint"]  # the stage's own checkpoint survived
    manifest = resumed_build["manifest"]
    assert manifest.training_config["build"]["stages"] == {
        "data": "cached", "learn_ids": "cached", "retriever": "cached", "recommender": "resume", "evaluate": "run",
        "export": "run"}
    for stage in ("data", "learn_ids", "retriever"):  # not run again: their markers are the first build's
        assert resumed_build["markers"][stage] == first["markers"][stage]
    assert resumed_build["markers"]["recommender"]["resumed"] is True
    # the recommender's training loop found its finished checkpoint and returned at once with its weights
    training = resumed_build["recommender"]["training"]
    assert training["seconds"] == 0.0 and training["steps"] > 0 and training["epochs"] == 2
    assert set(manifest.models) == {"indexer", "retriever", "recommender"}
    for entry in manifest.models.values():
        assert entry.parity is not None and entry.parity.top_k_identical
    assert set(manifest.training_config["wall_seconds"]) == set(STAGES)


@pytest.mark.slow
def test_held_out_items_are_left_out_of_everything_and_written_as_index_documents(resumed_build) -> None:
    out, work = resumed_build["out"], resumed_build["work"]
    lines = [json.loads(line) for line in (out.parent / "demo.holdout.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(set(line) == {"doc_id", "text", "metadata"} for line in lines)
    held_out = {line["doc_id"] for line in lines}
    bundle = Bundle.open(out)
    assert not held_out & set(bundle.documents().doc_ids)
    assert resumed_build["manifest"].training_config["catalogue"]["holdout_items"] == 3
    # nor in the IDs or any user's sequence
    ids = {json.loads(line)["doc_id"] for line in (work / "learn_ids" / "ids" / "ids.jsonl").read_text().splitlines()}
    assert not held_out & ids
    sequences = (work / "data" / "user_sequence.txt").read_text().split()
    assert not held_out & set(sequences)
    # the text template and metadata of the bundle's documents (what POST /index-documents takes)
    documents = {d.doc_id: d for d in items_as_documents(load_amazon())}
    for line in lines:
        document = documents[line["doc_id"]]
        assert line["text"] == document.text and line["metadata"] == document_metadata(document)
    # the 40 most popular items: 3 held out, the rest in the bundle
    assert len(held_out) + resumed_build["manifest"].num_documents == 40


@pytest.mark.slow
def test_a_changed_setting_reruns_its_stage_and_those_that_depend_on_it(resumed_build) -> None:
    out, work = resumed_build["out"], resumed_build["work"]
    before = _markers(work)
    changed = [*SMALL, "--set", "retriever_overrides=[\"steps=5\"]", "--overwrite"]
    assert main(["build-demo", "--out", str(out), *changed]) == 0
    manifest = Bundle.open(out).manifest
    # the retriever's setting changed: it runs again, and so do the evaluation and the export, which read it;
    # the recommender reads the data and the IDs only
    assert manifest.training_config["build"]["stages"] == {
        "data": "cached", "learn_ids": "cached", "retriever": "run", "recommender": "cached", "evaluate": "run",
        "export": "run"}
    after = _markers(work)
    assert after["recommender"] == before["recommender"]
    assert after["retriever"]["settings"]["steps"] == 5 and after["retriever"]["settings_hash"] != \
        before["retriever"]["settings_hash"]
    assert manifest.training_config["retriever"]["steps"] == 5
