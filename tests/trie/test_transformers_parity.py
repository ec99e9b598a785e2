"""Parity with Hugging Face generate(): the same top-k IDs and scores on a tiny random T5.

transformers' beam search with ``prefix_allowed_tokens_fn`` over a dict of prefixes (the official
LMIndexer way) and ``length_penalty=0`` scores a sequence by its summed log-probs (divided by
``length ** 0 = 1``); its vocabulary is special tokens + one token block per level. Our step_fn wraps
the same model: the log-softmax over the full vocabulary, sliced to the level's block.
"""

from __future__ import annotations

import numpy as np
import pytest

from trie import SemanticIdTrie, constrained_beam_search

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = (6, 5, 3)
SPECIAL = 3  # pad (= decoder start), eos, unk
FIRST_TOKEN = np.cumsum((SPECIAL, *SIZES[:-1]))  # first token of each level's block
VOCAB = SPECIAL + sum(SIZES)


def tiny_t5(seed: int):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    # Random init gives near-uniform logits; sharpen them so scores are well separated (no near-ties).
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    return model


def semantic_ids(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    every = np.array(np.unravel_index(np.arange(int(np.prod(SIZES))), SIZES)).T
    chosen = every[rng.permutation(len(every))[:40]]
    # Every level-0 code present, so each step has at least num_beams valid continuations (otherwise
    # transformers would fill its beams with -inf, i.e. invalid, tokens and no comparison is fair).
    return np.unique(np.concatenate([chosen, every[:: SIZES[1] * SIZES[2]]]), axis=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_ids_and_scores_match_transformers_generate(seed: int) -> None:
    model = tiny_t5(seed)
    ids = semantic_ids(seed)
    trie = SemanticIdTrie.build(ids, codebook_sizes=SIZES)
    num_beams, top_k, num_queries = 5, 3, 3
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(SPECIAL, VOCAB, (num_queries, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)

    allowed_next: dict[tuple[int, ...], list[int]] = {}
    for row in ids.tolist():
        for level in range(len(SIZES)):
            tokens = allowed_next.setdefault(tuple(row[:level]), [])
            token = int(FIRST_TOKEN[level] + row[level])
            if token not in tokens:
                tokens.append(token)

    def prefix_allowed_tokens_fn(batch_id: int, sent: torch.Tensor) -> list[int]:
        generated = sent.tolist()[1:]  # drop the decoder start token
        codes = tuple(token - int(FIRST_TOKEN[level]) for level, token in enumerate(generated))
        return allowed_next.get(codes, [1])

    with torch.no_grad():
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            num_beams=num_beams,
            num_return_sequences=top_k,
            max_new_tokens=len(SIZES),
            min_new_tokens=len(SIZES),
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
            length_penalty=0.0,
            early_stopping=True,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        encoder_states = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def step_fn(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        query = torch.from_numpy(query_index)
        decoder_input_ids = torch.from_numpy(
            np.concatenate([np.zeros((len(prefixes), 1), dtype=np.int64), prefixes + FIRST_TOKEN[:level]], axis=1)
        )
        with torch.no_grad():
            logits = model(
                encoder_outputs=(encoder_states[query],),
                attention_mask=attention_mask[query],
                decoder_input_ids=decoder_input_ids,
            ).logits[:, -1, :]
        log_probs = torch.log_softmax(logits.float(), dim=-1).numpy()
        return log_probs[:, FIRST_TOKEN[level] : FIRST_TOKEN[level] + SIZES[level]]

    result = constrained_beam_search(step_fn, trie, num_queries=num_queries, beam_size=num_beams, top_k=top_k)

    sequences = generated.sequences[:, 1:].numpy().reshape(num_queries, top_k, len(SIZES))
    expected_ids = sequences - FIRST_TOKEN
    expected_scores = generated.sequences_scores.numpy().reshape(num_queries, top_k)
    assert result.counts.tolist() == [top_k] * num_queries
    np.testing.assert_array_equal(result.semantic_ids, expected_ids)
    np.testing.assert_allclose(result.scores, expected_scores, atol=1e-5, rtol=0)
    # And the scores are not all alike: the comparison can tell the IDs apart.
    assert np.min(np.abs(np.diff(result.scores, axis=1))) > 1e-4
