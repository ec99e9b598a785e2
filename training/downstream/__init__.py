"""Downstream: fine-tuning for retrieval, evaluation, cold start, bundle export (the recommender is
`training.recommendation`).

Modules
- tasks: ID sources (learn-ids outputs) and (input text -> semantic ID) training pairs.
- finetune: FinetuneConfig (presets training/configs/finetune-{tiny,quick,cpu,paper}.toml), the network
  to fine-tune (from the LMIndexer network, or fresh for rq-VAE / HC IDs) and the training loop.
- evaluate: constrained beam search (trie.constrained_beam_search) with the torch or ONNX decoder step,
  TREC runs, metrics, per-query latency.
- cold_start: greedy codes + next free counter for documents fine-tuning never saw.
- experiment: whole experiments (Cranfield retrieval) and the ID-method comparison.
- export: the bundle of docs/bundle.md, with the ONNX parity check.
- demo: `lmindexer build-demo`.

Command line (each writes into --out; fine-tuning resumes from its checkpoint when re-run):

    lmindexer learn-ids --corpus C.jsonl --out runs/ids                      # (indexing, not this package)
    lmindexer finetune --dataset cranfield --ids runs/ids --out runs/ret --preset quick
    lmindexer evaluate --model runs/ret                                       # valid + test, warm / cold
    lmindexer finetune --task recommendation --ids runs/ids --out runs/rec   # training.recommendation
    lmindexer export --recommender runs/rec --out bundles/mine
    lmindexer build-demo --out bundles/demo [--preset tiny]
"""
