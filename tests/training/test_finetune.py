"""Fine-tuning: task pairs, network initialisation, the loop lowers the loss, resume is the same run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from training.config import build_config
from training.data.amazon import item_text, load_amazon
from training.downstream.experiment import ids_overrides_for, ids_presets_for
from training.downstream.finetune import FinetuneConfig, build_network, train
from training.downstream.tasks import (
    Example,
    PseudoQueries,
    choose_cold_documents,
    document_spans,
    load_id_source,
    retrieval_examples,
)
from training.encoder import load_tokenizer
from training.errors import ConfigError
from training.indexing.id_table import write_ids_jsonl
from training.indexing.network import NetworkConfig, SemanticIdNetwork


def tiny_network(seed: int = 0, counter_size: int = 4) -> SemanticIdNetwork:
    """A real SemanticIdNetwork on a 1-layer, 32-wide BERT (MiniLM's vocabulary), fast on a CPU."""
    torch.manual_seed(seed)
    encoder = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    config = NetworkConfig(num_levels=2, codebook_size=8, counter_size=counter_size, decoder_layers=1,
                           decoder_heads=2, decoder_ff_size=64)
    return SemanticIdNetwork(config, encoder=encoder)


@pytest.fixture(scope="module")
def beauty_texts() -> list[str]:
    dataset = load_amazon()
    return [item_text(item) for item in list(dataset.items.values())[:16]]


def test_retrieval_pairs_hold_out_cold_documents_and_add_document_queries() -> None:
    id_of = {"a": (1, 2, 0), "b": (1, 2, 1), "c": (3, 0, 0)}
    documents = {"a": "alpha text", "b": "beta text", "c": "gamma text"}
    qrels = {"q1": {"a": 2, "b": 0}, "q2": {"c": 1}}
    queries = {"q1": "first query", "q2": "second query"}
    pairs = retrieval_examples(queries, qrels, documents, id_of, doc_as_query=True, titles={"a": "Alpha"},
                               cold={"c"})
    assert [(e.text, e.doc_id, e.semantic_id) for e in pairs] == [
        ("first query", "a", (1, 2, 0)),  # b is judged non-relevant (gain 0); q2's document is cold
        ("alpha text", "a", (1, 2, 0)), ("Alpha", "a", (1, 2, 0)),
        ("beta text", "b", (1, 2, 1)),
    ]
    assert len(retrieval_examples(queries, qrels, documents, id_of, doc_as_query=False)) == 2


def test_span_pseudo_queries_are_seeded_distinct_pieces_of_their_document() -> None:
    text = " ".join(f"w{i}" for i in range(60))
    spans = document_spans(text, 5, 10, random.Random("7:a"))
    assert len(spans) == 5 and len(set(spans)) == 5
    for span in spans:
        words = span.split()
        assert 5 <= len(words) <= 10 and span in text  # contiguous words of the document
    assert spans == document_spans(text, 5, 10, random.Random("7:a"))  # same seed, same spans
    assert document_spans("too short to cut", 5, 10, random.Random(0)) == []
    id_of = {"a": (1, 2, 0), "b": (3, 0, 0)}
    documents = {"a": text, "b": "short text"}
    pairs = retrieval_examples({}, {}, documents, id_of, doc_as_query=True, cold={"b"}, span_queries=3,
                               span_words=10, seed=7)
    assert [e.doc_id for e in pairs] == ["a"] * 4  # the document itself + 3 spans; cold b has none
    assert [e.text for e in pairs[1:]] == document_spans(text, 3, 10, random.Random("7:a"))
    assert retrieval_examples({}, {}, documents, id_of, doc_as_query=False, span_queries=3) == []


COLLECTION = {
    "d1": "Supersonic flow over a wedge. The shock wave angle depends on the Mach number. "
          "We report wind tunnel measurements of the shock wave angle at Mach numbers from two to five. "
          "The results are compared with theory.",
    "d2": "Heat transfer in laminar boundary layers. The boundary layer on a flat plate is heated from below. "
          "Heat transfer rates are measured. The results are compared with theory.",
    "d3": "Buckling of thin cylindrical shells under axial compression. Shell buckling loads are far below "
          "the classical value. The results are compared with theory.",
    "d4": "One sentence only about transonic airfoils",
}


def test_pseudo_queries_are_salient_deterministic_and_bounded() -> None:
    pseudo = PseudoQueries(COLLECTION)
    sentences = pseudo.salient_sentences("d1", 2, max_words=12)
    # the sentence every document shares ("The results are compared with theory.") is never the most salient
    assert len(sentences) == 2 and "compared with theory" not in sentences[0]
    assert all(s and len(s.split()) <= 12 and " ".join(s.split()[:3]) in COLLECTION["d1"] for s in sentences)
    assert "shock wave angle" in sentences[0]
    assert pseudo.salient_sentences("d4", 2, max_words=12) == []  # one sentence: the document-as-query pair
    keyphrases = pseudo.keyphrase_queries("d2", 2, terms=3, max_words=5)
    assert 1 <= len(keyphrases) <= 2 and all(q and len(q.split()) <= 5 for q in keyphrases)
    assert "heat transfer" in keyphrases[0]  # a bigram of the document, weighted above words of every document
    assert all(w not in ("the", "are", "with") for q in keyphrases for w in q.split())  # stop words removed
    again = PseudoQueries(dict(COLLECTION))
    assert again.salient_sentences("d1", 2, 12) == sentences and again.keyphrase_queries("d2", 2, 3, 5) == keyphrases
    # as training pairs: the real query repeated, then each warm document's own text and its pseudo-queries
    id_of = {d: (i, 0, 0) for i, d in enumerate(COLLECTION)}
    pairs = retrieval_examples({"q": "shock angle"}, {"q": {"d1": 1}}, COLLECTION, id_of, doc_as_query=True,
                               cold={"d3"}, sentence_queries=1, keyphrase_queries=1, keyphrase_terms=3,
                               pseudo_query_words=12, query_repeats=3)
    assert [e.text for e in pairs[:3]] == ["shock angle"] * 3
    by_doc = {d: [e.text for e in pairs[3:] if e.doc_id == d] for d in COLLECTION}
    assert by_doc["d3"] == [] and by_doc["d4"][0] == COLLECTION["d4"]
    assert by_doc["d1"] == [COLLECTION["d1"], *pseudo.salient_sentences("d1", 1, 12),
                            *pseudo.keyphrase_queries("d1", 1, 3, 12)]
    assert all(e.text.strip() for e in pairs)
    with pytest.raises(ConfigError, match="train_query_repeats"):
        FinetuneConfig(train_query_repeats=0)


def test_cold_documents_are_a_seeded_five_percent() -> None:
    ids = [f"d{i}" for i in range(200)]
    cold = choose_cold_documents(ids, 0.05, seed=3)
    assert len(cold) == 10 and cold <= set(ids)
    assert cold == choose_cold_documents(list(reversed(ids)), 0.05, seed=3)
    assert choose_cold_documents(ids, 0.0, seed=3) == set()


def test_fresh_network_is_sized_to_the_id_table(tmp_path: Path) -> None:
    codes = np.array([[0, 5, 0], [6, 1, 0], [6, 1, 1], [2, 3, 0]])
    write_ids_jsonl(tmp_path / "ids.jsonl", ["a", "b", "c", "d"], codes)
    (tmp_path / "run.json").write_text(json.dumps({"method": "hc", "codebook_sizes": [7, 6]}))
    source = load_id_source(tmp_path)
    assert source.network_dir is None and source.codebook_size == 7 and source.num_levels == 2
    config = build_config(FinetuneConfig, {"min_counter_size": 3, "decoder_layers": 1})
    network = build_network(source, config)
    assert network.config.codebook_sizes == (7, 7, 2 + 16)  # the largest group (2) + headroom for new documents


def test_lmindexer_ids_initialise_from_the_saved_indexer(tmp_path: Path) -> None:
    indexer = tiny_network(seed=5, counter_size=2)
    indexer.save(tmp_path / "network")
    codes = np.array([[0, 5, 0], [0, 5, 1], [0, 5, 2], [7, 1, 0]])  # the table needs a counter of 3
    write_ids_jsonl(tmp_path / "ids.jsonl", list("abcd"), codes)
    (tmp_path / "run.json").write_text(json.dumps({"method": "lmindexer", "codebook_sizes": [8, 8]}))
    network = build_network(load_id_source(tmp_path), build_config(FinetuneConfig, {"min_counter_size": 3}))
    assert network.config.counter_size == 3 + 16  # the table's 3 + headroom; the saved head's 2 rows kept
    torch.testing.assert_close(network.codebooks, indexer.codebooks)
    torch.testing.assert_close(network.counter_head[:2], indexer.counter_head)


def test_training_lowers_the_loss(tmp_path: Path, beauty_texts) -> None:
    tokenizer = load_tokenizer()
    rng = np.random.default_rng(0)
    examples = [Example(text, f"d{i}", (int(rng.integers(8)), int(rng.integers(8)), int(rng.integers(4))))
                for i, text in enumerate(beauty_texts)]
    config = build_config(FinetuneConfig, {"steps": 40, "batch_size": 8, "lr": 1e-3, "head_lr": 5e-3,
                                           "warmup_steps": 2, "max_input_length": 24, "checkpoint_every": 0,
                                           "num_threads": 1})
    network = tiny_network()
    history = train(network, examples, config, tmp_path / "run", tokenizer=tokenizer, progress=False)
    losses = history["losses"]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])



class _CrashingTokenizer:
    """The real tokenizer, interrupted (as by a killed job) on its `crash_at`-th call."""

    def __init__(self, tokenizer, crash_at: int) -> None:
        self.tokenizer, self.calls, self.crash_at = tokenizer, 0, crash_at

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return self.tokenizer(*args, **kwargs)


def test_an_interrupted_run_resumes_from_its_checkpoint_as_the_same_run(tmp_path: Path, beauty_texts) -> None:
    tokenizer = load_tokenizer()
    examples = [Example(text, f"d{i}", (i % 8, (3 * i) % 8, i % 2)) for i, text in enumerate(beauty_texts)]
    config = build_config(FinetuneConfig, {"steps": 10, "batch_size": 8, "warmup_steps": 2, "max_input_length": 24,
                                           "checkpoint_every": 3, "num_threads": 1})
    whole = train(tiny_network(seed=1), examples, config, tmp_path / "whole", tokenizer=tokenizer, progress=False)
    with pytest.raises(KeyboardInterrupt):  # steps 1..6 done, checkpoints at 3 and 6, killed during step 7
        train(tiny_network(seed=1), examples, config, tmp_path / "resumed",
              tokenizer=_CrashingTokenizer(tokenizer, crash_at=7), progress=False)
    resumed = train(tiny_network(seed=9), examples, config, tmp_path / "resumed", tokenizer=tokenizer, progress=False)
    assert resumed["resumed_from"] == 6 and resumed["steps"] == 10
    np.testing.assert_allclose(resumed["losses"], whole["losses"], rtol=1e-5, atol=1e-6)


def test_benchmark_ids_presets_give_every_method_one_preset() -> None:
    methods = ["lmindexer", "rqvae", "hc"]
    assert ids_presets_for("quick", methods) == dict.fromkeys(methods, "quick")
    assert ids_presets_for("quick,lmindexer=cpu-encoder", methods) == {
        "lmindexer": "cpu-encoder", "rqvae": "quick", "hc": "quick"}
    assert ids_presets_for("rqvae=quick, hc=paper", ["rqvae", "hc"]) == {"rqvae": "quick", "hc": "paper"}
    with pytest.raises(ConfigError, match="no preset for lmindexer"):
        ids_presets_for("rqvae=quick", ["lmindexer", "rqvae"])
    with pytest.raises(ConfigError, match="not one of the methods"):
        ids_presets_for("quick,kmeans=quick", methods)
    with pytest.raises(ConfigError, match="two default presets"):
        ids_presets_for("quick,paper", methods)
    assert ids_overrides_for(["lmindexer:num_threads=1", "lmindexer:seed=3", "hc:branching=8"], methods) == {
        "lmindexer": ["num_threads=1", "seed=3"], "hc": ["branching=8"]}
    with pytest.raises(ConfigError, match="METHOD:KEY=VALUE"):
        ids_overrides_for(["num_threads=1"], methods)
    with pytest.raises(ConfigError, match="not one of the methods"):
        ids_overrides_for(["kmeans:num_threads=1"], methods)


def test_finetune_dataset_beauty_points_to_the_item_token_recommender(tmp_path: Path, capsys) -> None:
    """The history-text recommender is gone: `--dataset beauty` exits 2 and names `--task recommendation`."""
    from lmindexer.cli import main
    from training.downstream.experiment import load_task

    status = main(["finetune", "--dataset", "beauty", "--ids", str(tmp_path / "ids"), "--out", str(tmp_path / "out")])
    assert status == 2 and "--task recommendation" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--task recommendation"):
        load_task("beauty")  # a finetune.json written by the old recommender, read by evaluate or export


def test_a_retriever_finetuned_before_issue_17_still_loads(tmp_path: Path) -> None:
    """finetune.json records of that time hold max_history and train_examples; they are ignored."""
    from training.config import config_to_dict
    from training.downstream.experiment import FINETUNE_RECORD, load_finetuned

    config = FinetuneConfig(steps=3)
    record = {"dataset": "cranfield", "config": {**config_to_dict(config), "max_history": 20,
                                                 "train_examples": "prefix"}}
    (tmp_path / FINETUNE_RECORD).write_text(json.dumps(record), encoding="utf-8")
    tiny_network().save(tmp_path / "network")
    _, loaded, _ = load_finetuned(tmp_path)
    assert loaded == config
