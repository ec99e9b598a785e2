"""The LMIndexer quantizer: hard code vector forward, softmax-mixture gradient backward."""

from __future__ import annotations

import math

import pytest
import torch

from training.indexing.quantizer import code_perplexity, quantize


@pytest.fixture()
def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, 8, generator=generator, dtype=torch.float64)
    codebook = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    return hidden, codebook


def test_forward_is_the_hard_code_vector(tensors) -> None:
    hidden, codebook = tensors
    out = quantize(hidden, codebook, tau=0.7)
    expected_codes = torch.stack([torch.stack([(h @ codebook.T).argmax() for h in row]) for row in hidden])
    assert torch.equal(out.codes, expected_codes)
    assert out.vectors.shape == hidden.shape
    torch.testing.assert_close(out.vectors, codebook[expected_codes], rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.3, 4.0])
def test_gradient_is_the_softmax_mixture_gradient(tensors, tau: float) -> None:
    hidden, codebook = tensors
    upstream = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    h1, e1 = hidden.clone().requires_grad_(), codebook.clone().requires_grad_()
    grad_h, grad_e = torch.autograd.grad((quantize(h1, e1, tau).vectors * upstream).sum(), (h1, e1))

    h2, e2 = hidden.clone().requires_grad_(), codebook.clone().requires_grad_()
    mixture = torch.softmax(h2 @ e2.T / tau, dim=-1) @ e2  # the soft path, written out
    want_h, want_e = torch.autograd.grad((mixture * upstream).sum(), (h2, e2))

    torch.testing.assert_close(grad_h, want_h)
    torch.testing.assert_close(grad_e, want_e)
    assert grad_h.abs().sum() > 0 and grad_e.abs().sum() > 0


def test_tau_must_be_positive(tensors) -> None:
    hidden, codebook = tensors
    with pytest.raises(ValueError):
        quantize(hidden, codebook, tau=0.0)


def test_code_perplexity() -> None:
    assert code_perplexity(torch.arange(8), 8) == pytest.approx(8.0)
    assert code_perplexity(torch.zeros(10, dtype=torch.int64), 8) == pytest.approx(1.0)
    codes = torch.tensor([0, 0, 1, 2])  # p = (1/2, 1/4, 1/4)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert code_perplexity(codes, 4) == pytest.approx(math.exp(entropy))
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert code_perplexity(probs, 2) == pytest.approx(2.0)
