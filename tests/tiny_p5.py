"""A tiny P5-format dataset for recommender tests: 20 items (item 7 has no title), 40 users whose items
always follow i -> i + 1 (mod 20), and HC-style IDs (i % K0, i // K0, 0) over 2 learned levels."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path


def write_tiny_p5(root: Path, codebook_sizes: Sequence[int] = (4, 5)) -> tuple[Path, Path, Path]:
    """Write items.jsonl.gz, user_sequence.txt and an ids/ directory (learn-ids layout) under ``root``;
    return their paths. ``codebook_sizes`` (K0, K1) must hold the 20 items: K0 * K1 >= 20."""
    first, second = codebook_sizes
    assert first * second >= 20, codebook_sizes
    items = []
    for i in range(20):
        record = {"asin": f"A{i:02d}", "p5_id": i + 1, "brand": f"brand{i % 4}",
                  "categories": [["Beauty", ["Skin", "Hair", "Nails", "Makeup"][i % 4]]]}
        if i != 7:
            record["title"] = f"product number {i}"
        items.append(record)
    with gzip.open(root / "items.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in items)
    lines = [f"U{u} " + " ".join(f"A{(u % 20 + k) % 20:02d}" for k in range(4 + u % 5)) for u in range(40)]
    (root / "user_sequence.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids_dir = root / "ids"
    ids_dir.mkdir()
    with open(ids_dir / "ids.jsonl", "w", encoding="utf-8") as handle:
        for i in range(20):
            handle.write(json.dumps({"doc_id": f"A{i:02d}", "semantic_id": [i % first, i // first, 0]}) + "\n")
    (ids_dir / "run.json").write_text(json.dumps({"method": "hc", "codebook_sizes": [first, second],
                                                  "config": {"encoder": "all-MiniLM-L6-v2", "max_length": 32}}))
    return root / "items.jsonl.gz", root / "user_sequence.txt", ids_dir
