"""The LMIndexer schedule end to end on a tiny corpus: shapes, saved network, determinism, presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import load_config, preset_path
from training.data.corpus import Document
from training.errors import ConfigError
from training.indexing.lmindexer import LMIndexerConfig, learn_lmindexer_codes
from training.indexing.lmindexer.encoder_states import tokenize_corpus
from training.indexing.network import NetworkConfig, SemanticIdNetwork

COLOURS = ["red", "blue", "green", "black"]
KINDS = [("nail polish", "Beauty, Makeup, Nails"), ("face cream", "Beauty, Skin Care, Face"),
         ("shampoo", "Beauty, Hair Care, Shampoos")]


def _documents(n: int = 24) -> list[Document]:
    docs = []
    for i in range(n):
        kind, category = KINDS[i % len(KINDS)]
        text = f"title: {COLOURS[i % 4]} {kind} {i}, category: {category}"
        docs.append(Document(doc_id=f"d{i}", text=text, category=category))
    return docs


TINY = LMIndexerConfig(
    num_levels=2, codebook_size=4, max_length=20, train_encoder_layers=0, decoder_layers=1, decoder_ff_size=32,
    reconstructor_ff_size=32, recon_vocab="corpus", recon_target_fraction=0.5, warmup_epochs=1,
    nocode_epochs=(1,), full_epochs=(1,), batch_size=8, dev_size=8, kmeans_n_init=1, kmeans_max_iter=20,
    progress=False, num_threads=1,
)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("lmindexer")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMINDEXER_CACHE_DIR", "off")
        learned = learn_lmindexer_codes(_documents(), TINY, out)
    return out, learned


def test_codes_shape_files_and_saved_network(first_run) -> None:
    out, learned = first_run
    assert learned.codes.shape == (24, 2) and learned.codes.dtype == np.int64
    assert learned.codebook_sizes == (4, 4)
    assert learned.codes.min() >= 0 and learned.codes.max() < 4
    for relative in learned.files.values():
        assert (out / relative).is_file(), relative
    network = SemanticIdNetwork.load(out / "network")
    assert network.config.num_levels == 2 and network.config.codebook_size == 4
    # The saved network reproduces the learned codes by greedy decoding (design.md, job 2).
    corpus = tokenize_corpus([d.text for d in _documents()], TINY)
    ids = torch.nn.utils.rnn.pad_sequence(corpus.input_ids, batch_first=True, padding_value=corpus.pad_id)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in corpus.input_ids], batch_first=True)
    with torch.no_grad():
        network.eval()
        states = network.encode(ids, mask)
        codes = torch.zeros(24, 1, 2, dtype=torch.int64)  # greedy: each level conditioned on the ones chosen
        for level in range(2):
            codes[:, 0, level] = network.decoder_step(states, mask, codes, torch.tensor(level))[:, 0].argmax(-1)
    # The table is re-assigned from the final network: greedy decoding of the *loaded* network (one
    # padded batch here, not the indexer's batches) gives exactly the written codes, every level.
    assert np.array_equal(codes[:, 0].numpy(), learned.codes)
    levels = learned.diagnostics["levels"]
    assert learned.diagnostics["final_network_agreement"] == 1.0
    assert learned.diagnostics["final_network_agreement_documents"] == 24
    assert [lv["final_network_agreement"] for lv in levels] == [1.0, 1.0]
    reassignment = learned.diagnostics["reassignment"]
    assert 0.0 <= reassignment["changed_documents"] <= 1.0 and len(reassignment["changed_per_level"]) == 2
    assert levels[0]["teacher_forced_agreement"] == pytest.approx(1.0 - reassignment["changed_per_level"][0])
    record = json.loads((out / "lmindexer.json").read_text())
    assert record["config"]["codebook_size"] == 4
    assert [lv["level"] for lv in levels] == [0, 1]
    for lv in levels:
        assert 1.0 <= lv["perplexity"] <= 4.0 and 0 < lv["usage"] <= 1.0
        assert 0.0 <= lv["reconstruction_accuracy"] <= 1.0
    assert levels[1]["diff_ratio"] is not None
    stages = [s["stage"] for s in learned.diagnostics["stages"]]
    assert stages == ["level0-warmup", "level0-nocode", "level0-full", "level1-nocode", "level1-full"]


def test_deterministic_on_cpu_and_resumable(first_run, tmp_path: Path, monkeypatch) -> None:
    _, learned = first_run
    monkeypatch.setenv("LMINDEXER_CACHE_DIR", "off")
    again = learn_lmindexer_codes(_documents(), TINY, tmp_path / "again")
    assert np.array_equal(again.codes, learned.codes)
    # every stage checkpoint is marked done: a rerun in the same place skips the training
    resumed = learn_lmindexer_codes(_documents(), TINY, tmp_path / "again")
    assert np.array_equal(resumed.codes, learned.codes)
    assert all(s.get("resumed") for s in resumed.diagnostics["stages"] if s.get("epochs"))


def test_presets_load_and_bad_settings_fail() -> None:
    for preset in ("quick", "paper", "cpu"):
        config = load_config(LMIndexerConfig, preset_path("lmindexer", preset))
        assert config.num_levels >= 2
    assert load_config(LMIndexerConfig, preset_path("lmindexer", "paper")).codebook_size == 512
    with pytest.raises(ConfigError):
        load_config(LMIndexerConfig, None, ["hint_mask_probs=[1.5]"])
    with pytest.raises(ConfigError):
        load_config(LMIndexerConfig, None, ["no_such_setting=1"])


def test_folded_decode_equals_network_decode() -> None:
    torch.manual_seed(0)
    network = SemanticIdNetwork(NetworkConfig(num_levels=3, codebook_size=8, counter_size=4))
    states = torch.randn(3, 9, network.hidden_size)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    vectors = network.embed_codes(torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 0]], [[2, 2], [1, 1]]]))
    network.eval()
    torch.testing.assert_close(network.decode(states, mask, vectors, folded=True),
                               network.decode(states, mask, vectors), atol=2e-5, rtol=1e-4)
    network.train()  # same dropout draws in the same order
    torch.manual_seed(5)
    fast = network.decode(states, mask, vectors, folded=True)
    torch.manual_seed(5)
    torch.testing.assert_close(fast, network.decode(states, mask, vectors), atol=2e-5, rtol=1e-4)


def test_consolidation_stage_fits_the_table(tmp_path: Path, monkeypatch) -> None:
    """consolidate_epochs > 0: a last decoder-only stage (teacher-forced CE on every level's codes) runs after
    the last level; the network then reproduces the table, and re-assignment changes only what it missed."""
    from dataclasses import replace

    monkeypatch.setenv("LMINDEXER_CACHE_DIR", "off")
    config = replace(TINY, warmup_epochs=0.5, nocode_epochs=(0.5,), full_epochs=(0.5,), consolidate_epochs=6,
                     consolidate_tau=0.1, dev_size=8)
    learned = learn_lmindexer_codes(_documents(), config, tmp_path / "out")
    stages = learned.diagnostics["stages"]
    assert stages[-1]["stage"] == "consolidate" and stages[-1]["epochs"] == 6
    assert all("dev_agreement" in epoch for epoch in stages[-1]["history"])
    before, after = stages[-1]["teacher_forced_agreement_before"], stages[-1]["teacher_forced_agreement_after"]
    assert 0.0 <= before <= 1.0 and after >= 0.9
    # what the consolidated network did not fit is what the re-assignment changes
    assert learned.diagnostics["reassignment"]["changed_documents"] <= 1.0 - after + 1e-9
    assert learned.diagnostics["final_network_agreement"] == 1.0
    with pytest.raises(ConfigError):
        LMIndexerConfig(consolidate_epochs=-1)
