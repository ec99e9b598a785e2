"""Sequential recommendation over item tokens (job 4 of docs/design.md; the recommender issue).

Each item is one token: its frozen text vector (computed once per item by the ID source's
encoder), projected, plus the learned embeddings of its semantic-ID codes, plus position. A small
causal Transformer reads the history; two heads share its hidden state: the ID decoder (the next
item's semantic ID level by level, decoded with `trie.constrained_beam_search`) and the dense head
(the next item's token, scored against every item's token). Modules by role:

- `settings`: the typed settings (presets `training/configs/recommender-*.toml`);
- `items`: the item catalogue (doc_ids, text vectors, semantic IDs) and the text vectors' source;
- `data`: P5 sequences by path, the leave-one-out split, cold-start items, training batches;
- `model`: the sequence model, the ID decoder and the dense head, shaped for separate ONNX graphs;
- `evaluate`: the `generative` and `hybrid` rankings and their metrics.
"""
