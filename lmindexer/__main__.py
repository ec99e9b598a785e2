"""python -m lmindexer COMMAND ... (same as the `lmindexer` console script)."""

from lmindexer.cli import main

raise SystemExit(main())
