"""The shared semantic-ID network: teacher forcing, the exported decoder step, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.indexing.network import NetworkConfig, SemanticIdNetwork


@pytest.fixture(scope="module")
def network() -> SemanticIdNetwork:
    torch.manual_seed(0)
    return SemanticIdNetwork(NetworkConfig(num_levels=2, codebook_size=16, counter_size=4)).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, 2000, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    codes = torch.tensor([[1, 2, 0], [3, 4, 1], [5, 6, 2]])
    return input_ids, attention_mask, codes


@torch.no_grad()
def test_decoder_step_equals_teacher_forced_logits(network, batch) -> None:
    input_ids, attention_mask, codes = batch
    logits = network(input_ids, attention_mask, codes)
    assert [tuple(x.shape) for x in logits] == [(3, 16), (3, 16), (3, 4)]
    states = network.encode(input_ids, attention_mask)
    beams = codes[:, None, :2].expand(3, 2, 2)  # two identical beams per query
    for level, size in enumerate((16, 16, 4)):
        step = network.decoder_step(states, attention_mask, beams, torch.tensor(level))
        assert step.shape == (3, 2, 16)
        expected = logits[level].log_softmax(-1)
        torch.testing.assert_close(step[:, 0, :size], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[:, 1, :size], expected, atol=1e-5, rtol=1e-5)
        assert torch.all(step[:, :, size:] < -1e8)  # padding past the level's size


@torch.no_grad()
def test_decoder_step_reads_only_the_codes_before_the_level(network, batch) -> None:
    input_ids, attention_mask, codes = batch
    states = network.encode(input_ids, attention_mask)
    prefix = codes[:, None, :2].clone()
    changed = prefix.clone()
    changed[..., 1] = 9  # a level-1 code cannot influence the prediction of level 1
    level = torch.tensor(1)
    torch.testing.assert_close(network.decoder_step(states, attention_mask, prefix, level),
                               network.decoder_step(states, attention_mask, changed, level))
    changed[..., 0] = 9  # but a level-0 code must
    assert not torch.allclose(network.decoder_step(states, attention_mask, prefix, level),
                              network.decoder_step(states, attention_mask, changed, level))


@torch.no_grad()
def test_save_and_load_round_trip_and_counter_resize(network, batch, tmp_path) -> None:
    input_ids, attention_mask, codes = batch
    network.save(tmp_path)
    loaded = SemanticIdNetwork.load(tmp_path).eval()
    for a, b in zip(network(input_ids, attention_mask, codes), loaded(input_ids, attention_mask, codes),
                    strict=True):
        torch.testing.assert_close(a, b)
    bigger = SemanticIdNetwork.load(tmp_path, counter_size=8)
    assert bigger.counter_head.shape == (8, network.hidden_size)
    torch.testing.assert_close(bigger.counter_head[:4], network.counter_head)


@torch.no_grad()
def test_decoder_step_exports_to_onnx_with_parity(network, batch, tmp_path) -> None:
    import onnxruntime

    class Step(torch.nn.Module):
        def __init__(self, inner: SemanticIdNetwork) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, states, mask, codes, level):
            return self.inner.decoder_step(states, mask, codes, level)

    input_ids, attention_mask, codes = batch
    states = network.encode(input_ids, attention_mask)
    # eval() on the wrapper: export restores the wrapper's mode recursively afterwards.
    step = Step(network).eval()
    path = tmp_path / "decoder_step.onnx"
    torch.onnx.export(
        step, (states, attention_mask, codes[:, None, :2].expand(3, 2, 2), torch.tensor(1)), str(path),
        input_names=["encoder_states", "attention_mask", "codes", "level"], output_names=["log_probs"],
        dynamic_axes={"encoder_states": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                      "codes": {0: "B", 1: "W"}, "log_probs": {0: "B", 1: "W"}},
        dynamo=False, opset_version=17,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(2)
    for level in range(3):
        for width in (1, 5):
            prefixes = torch.randint(0, 16, (3, width, 2), generator=generator)
            got = session.run(None, {"encoder_states": states.numpy(), "attention_mask": attention_mask.numpy(),
                                     "codes": prefixes.numpy(), "level": np.array(level, dtype=np.int64)})[0]
            want = step(states, attention_mask, prefixes, torch.tensor(level)).numpy()
            size = (16, 16, 4)[level]
            assert np.abs(got[..., :size] - want[..., :size]).max() < 1e-4


@torch.no_grad()
def test_one_layer_decoder_step_equals_teacher_forcing(batch) -> None:
    # The last layer runs at the predicted position only; with one layer that is the whole decoder.
    torch.manual_seed(3)
    network = SemanticIdNetwork(NetworkConfig(num_levels=3, codebook_size=8, counter_size=5,
                                              decoder_layers=1)).eval()
    input_ids, attention_mask, _ = batch
    codes = torch.tensor([[1, 2, 3, 0], [7, 0, 5, 4], [0, 0, 0, 1]])
    logits = network(input_ids, attention_mask, codes)
    states = network.encode(input_ids, attention_mask)
    for level, size in enumerate((8, 8, 8, 5)):
        step = network.decoder_step(states, attention_mask, codes[:, None, :3], torch.tensor(level))
        torch.testing.assert_close(step[:, 0, :size], logits[level].log_softmax(-1), atol=1e-5, rtol=1e-5)
