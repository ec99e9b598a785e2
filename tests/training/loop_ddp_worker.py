"""Run by test_loop under `torchrun --nproc_per_node=2` and as one process: a few steps of
fine-tuning and of an indexer stage on tiny models without dropout.

    python loop_ddp_worker.py OUT_DIR BATCH_SIZE ENCODER_DIR

writes OUT_DIR/{finetune,indexer}.pt (rank 0): the trained state, the steps and the world size,
and OUT_DIR/{kind}-initial.pt, the state before training. ENCODER_DIR holds a tiny BERT encoder
and MiniLM's tokenizer (`write_tiny_encoder`), so that the indexer loads no 90 MB model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

from training.downstream.finetune import FinetuneConfig, train
from training.downstream.tasks import Example
from training.encoder import load_tokenizer
from training.indexing.lmindexer import LMIndexer, LMIndexerConfig
from training.indexing.lmindexer.model import StageSpec
from training.indexing.network import NetworkConfig, SemanticIdNetwork
from training.loop import distributed_context

WORDS = ["red", "blue", "green", "black", "white", "soap", "cream", "oil", "hair", "nail", "face", "skin", "lip",
         "eye", "body", "hand"]


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def write_tiny_encoder(directory: Path) -> None:
    """A tiny random BERT without dropout and MiniLM's tokenizer, as a Hugging Face model folder."""
    tiny_bert().save_pretrained(directory)
    load_tokenizer().save_pretrained(directory)


def texts(n: int = 16, words: int = 5) -> list[str]:
    """n texts of `words` one-token words each: every document has as many tokens (equal shares)."""
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(n)]


def save(path: Path, state: dict[str, torch.Tensor], **figures: object) -> None:
    if distributed_context("cpu").is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": {k: v.detach().clone() for k, v in state.items()}, **figures}, path)


def finetune(out: Path, batch_size: int) -> None:
    network = SemanticIdNetwork(NetworkConfig(num_levels=2, codebook_size=8, counter_size=4, decoder_layers=1,
                                              decoder_heads=2, decoder_ff_size=64, dropout=0.0), encoder=tiny_bert())
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    torch.save(initial, out / "finetune-initial.pt")
    rng = np.random.default_rng(1)
    examples = [Example(text, f"d{i}", (int(rng.integers(8)), int(rng.integers(8)), int(rng.integers(4))))
                for i, text in enumerate(texts())]
    config = FinetuneConfig(steps=4, batch_size=batch_size, lr=1e-3, head_lr=5e-3, warmup_steps=1,
                            max_input_length=16, checkpoint_every=0, num_threads=1, train_word_embeddings=True)
    result = train(network, examples, config, out / "finetune-run", tokenizer=load_tokenizer(), progress=False)
    save(out / "finetune.pt", network.state_dict(), steps=result["steps"], world_size=result["world_size"])


def indexer_stage(out: Path, batch_size: int, encoder: Path) -> None:
    config = LMIndexerConfig(encoder=str(encoder), num_levels=1, codebook_size=4, max_length=12,
                             train_encoder_layers=0, decoder_layers=1, decoder_heads=2, decoder_ff_size=32,
                             reconstructor_heads=2, reconstructor_ff_size=32, recon_vocab="corpus", dropout=0.0,
                             contrastive_weight=0.0, batch_size=batch_size, dev_size=0, progress=False,
                             num_threads=1, device="cpu")
    indexer = LMIndexer(texts(), config, out / "indexer-run", distributed_context("cpu"))
    trained = {k: v for k, v in indexer.model.state_dict().items() if not k.startswith("network.encoder.")}
    torch.save({k: v.clone() for k, v in trained.items()}, out / "indexer-initial.pt")
    indexer.encoder_states.build_cache(indexer.corpus, 16, indexer.device, None, False)
    record = indexer.run_stage(StageSpec(0, "nocode", 0.0, True, False), epochs=2)
    state = {k: v for k, v in indexer.model.state_dict().items() if not k.startswith("network.encoder.")}
    save(out / "indexer.pt", state, steps=record["steps"], world_size=indexer.context.world_size)


if __name__ == "__main__":
    out_dir, size, encoder_dir = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    out_dir.mkdir(parents=True, exist_ok=True)
    finetune(out_dir, size)
    indexer_stage(out_dir, size, encoder_dir)
