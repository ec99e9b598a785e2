"""One way to open an onnxruntime session, for every graph of a bundle (text models, recommender, text vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort


def inference_session(graph: Path, providers: Sequence[str], *, intra_op_threads: int = 0,
                      allow_spinning: bool = False) -> ort.InferenceSession:
    """An onnxruntime session of ``graph`` with all graph optimisations.

    ``intra_op_threads`` 0 lets onnxruntime use every core. One inter-op thread: a model runs one batch at a
    time (the service's batcher serialises calls), so inter-op threads only add contention on small machines.
    ``allow_spinning`` False: idle threads sleep instead of spinning, which leaves the cores to the other
    sessions and to the HTTP workers between requests.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return ort.InferenceSession(str(graph), options, providers=list(providers))
