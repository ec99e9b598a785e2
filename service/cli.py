"""`lmindexer serve --bundle DIR [--host HOST --port PORT]`: serve a bundle over HTTP.

Every other setting comes from LMINDEXER_* environment variables (service/settings.py documents
each one), e.g.:
    LMINDEXER_REDIS_URL=redis://127.0.0.1:6379/0 LMINDEXER_API_KEY=secret \\
        lmindexer serve --bundle bundles/demo --port 8000
"""

from __future__ import annotations

import argparse
import logging

from pydantic import ValidationError

from bundle import Bundle, BundleError
from service.logs import configure_logging
from service.settings import ServiceSettings

HELP = "Serve a bundle over HTTP (POST /search, /recommend, /index-documents)."

logger = logging.getLogger(__name__)


class SettingsError(Exception):
    """A bad LMINDEXER_* value or option: printed by the dispatcher without a traceback."""

    exit_status = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options (each also settable as LMINDEXER_BUNDLE_DIR, _HOST, _PORT)."""
    parser.add_argument("--bundle", dest="bundle_dir", default=None,
                        help="Bundle directory (manifest.json, ONNX graphs, trie). Env: LMINDEXER_BUNDLE_DIR.")
    parser.add_argument("--host", default=None, help="Interface to listen on. Default 127.0.0.1.")
    parser.add_argument("--port", type=int, default=None, help="TCP port. Default 8000.")


def build_settings(args: argparse.Namespace) -> ServiceSettings:
    """Settings from the environment, overridden by the command-line options that were given."""
    overrides = {k: v for k, v in vars(args).items() if k in ("bundle_dir", "host", "port") and v is not None}
    try:
        return ServiceSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        if any(e["loc"] == ("bundle_dir",) and e["type"] == "missing" for e in exc.errors()):
            problems = "no bundle: pass --bundle DIR or set LMINDEXER_BUNDLE_DIR"
        raise SettingsError(problems) from None


def run(args: argparse.Namespace) -> int:
    """Validate the settings and the bundle's manifest, then run uvicorn (one worker) until stopped."""
    import uvicorn  # imported here: `lmindexer --help` stays fast

    from service.app import create_app
    from service.components import choose_indexer_precision, default_store_path
    from service.store import DocumentStore

    settings = build_settings(args)
    configure_logging(settings.log_level, use_json=settings.log_json)
    # Fail fast, with a clear message and no traceback, before uvicorn starts.
    # The manifest is read strictly: a missing or unknown key, or another format version, stops here.
    bundle = Bundle.open(settings.bundle_dir)
    choose_indexer_precision(bundle, settings.indexer_precision)  # int8 asked of a bundle without it
    DocumentStore.check_belongs_to(settings.store_path or default_store_path(bundle), bundle.fingerprint)
    app = create_app(settings)
    # One worker per process: the models are loaded once; scale with replicas (docs/service.md).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise BundleError("the service did not start; see the log above")
    return 0
