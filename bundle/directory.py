"""A bundle directory on disk: its manifest, read strictly, and every file it names checked to exist."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bundle.documents import DocumentTable, read_documents
from bundle.errors import BundleError
from bundle.manifest import BundleManifest

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: ``directory``, its ``manifest`` and ``fingerprint`` (the first 16 hex digits of
    manifest.json's sha256; it names the bundle in Redis keys and in the service's store)."""

    directory: Path
    manifest: BundleManifest
    fingerprint: str

    @classmethod
    def open(cls, directory: Path | str) -> Bundle:
        """Read ``directory/manifest.json`` and check that every file it names exists (BundleError naming
        the file or key otherwise), before any model is loaded."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise BundleError(f"{directory}: not a bundle (no {MANIFEST_FILE}); build one with "
                              "`lmindexer build-demo --out DIR` or `lmindexer export`")
        data = path.read_bytes()
        manifest = BundleManifest.from_json(data, source=str(path))
        for name in manifest.files():
            if not (directory / name).is_file():
                raise BundleError(f"{path} names {directory / name}, which does not exist")
        return cls(directory, manifest, hashlib.sha256(data).hexdigest()[:16])

    def path(self, name: str) -> Path:
        """A file of the bundle by its manifest name (relative to the bundle)."""
        return self.directory / name

    @property
    def trie_path(self) -> Path:
        """The trie file (trie.SemanticIdTrie.load reads it)."""
        return self.path(self.manifest.trie)

    def documents(self) -> DocumentTable:
        """Read documents.jsonl (line i = trie row i), checked against the manifest (count, ID width)."""
        manifest = self.manifest
        return read_documents(self.path(manifest.documents), width=len(manifest.codebook_sizes),
                              expected=manifest.num_documents)


def write_manifest(directory: Path, manifest: BundleManifest) -> Path:
    """Write ``directory/manifest.json``; returns its path."""
    path = Path(directory) / MANIFEST_FILE
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path
