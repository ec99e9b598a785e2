"""bundle and the service import, load a bundle and answer with torch and transformers unavailable (as in
the serving image, which never installs them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# In a fresh interpreter: make `import torch` (and transformers, and training) fail, as when not installed.
BLOCK = textwrap.dedent("""
    import sys
    for name in ("torch", "transformers", "training"):
        sys.modules[name] = None  # import raises ModuleNotFoundError
""")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_block_really_blocks_torch() -> None:
    result = _run("import torch\n")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_bundle_and_service_import_without_torch() -> None:
    result = _run("""
        import bundle, service, service.app, service.components, service.cli
        print("imported")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_the_service_serves_a_bundle_without_torch(bundle_dir: Path, tmp_path: Path) -> None:
    result = _run(f"""
        from fastapi.testclient import TestClient
        from service.app import create_app
        from service.settings import ServiceSettings

        settings = ServiceSettings(bundle_dir={str(bundle_dir)!r}, store_path={str(tmp_path / "s.sqlite3")!r},
                                   log_json=False)
        with TestClient(create_app(settings)) as client:
            search = client.post("/search", json={{"query": "vegan lavender serum", "k": 3}})
            recommend = client.post("/recommend", json={{"history": ["D000001", "D000002"], "k": 3}})
            indexed = client.post("/index-documents", json={{"documents": [{{"doc_id": "N1", "text": "rose toner"}}]}})
        print(search.status_code, len(search.json()["results"]), recommend.status_code, indexed.status_code)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["200", "3", "200", "200"]
