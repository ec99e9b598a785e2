# syntax=docker/dockerfile:1
# The serving image: trie/ + bundle/ + service/ + the `lmindexer` CLI, the base dependencies only (no torch),
# CPU onnxruntime. The bundle is data: mount it (read-only) and point LMINDEXER_BUNDLE_DIR at it;
# it is never copied into the image, so one image serves every model version.
#
#   docker build -f docker/service.Dockerfile -t lmindexer-service .
#   docker run --rm -p 8000:8000 -v "$PWD/bundles:/bundles:ro" \
#       -e LMINDEXER_BUNDLE_DIR=/bundles/demo lmindexer-service
#
# GPU serving: docker/service-gpu.Dockerfile (CUDA runtime base, onnxruntime-gpu).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- build stage: a virtual environment with the base dependencies and the wheel -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (their layer is rebuilt only when pyproject.toml changes): the base list of
# [project].dependencies, read with the standard library. No extra: no torch, CPU onnxruntime.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# Then the code: only what serving needs. The wheel builds without training/ (hatch skips it).
COPY lmindexer ./lmindexer
COPY trie ./trie
COPY bundle ./bundle
COPY service ./service
RUN pip install --no-deps . \
    && python -c "import service, bundle, trie, lmindexer.cli; import onnxruntime" \
    && ! python -c "import torch" 2>/dev/null

# ---- runtime stage ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LMINDEXER_HOST=0.0.0.0 \
    LMINDEXER_PORT=8000
# A non-root user. /app/var holds the SQLite document stores (var/store-<bundle fingerprint>.sqlite3
# under the working directory: one file per bundle, so switching bundles keeps the old store for a
# rollback). Mount a volume there, one per replica; a fresh named volume takes this directory's owner.
RUN groupadd --system --gid 10001 lmindexer \
    && useradd --system --uid 10001 --gid lmindexer --home-dir /app --shell /usr/sbin/nologin lmindexer \
    && mkdir -p /app/var /bundles \
    && chown -R lmindexer:lmindexer /app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
VOLUME ["/app/var"]
EXPOSE 8000
# Liveness through the standard library (slim images have no curl); /readyz is for load balancers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LMINDEXER_PORT', '8000'), timeout=2)"]
# Every setting comes from LMINDEXER_* variables (LMINDEXER_BUNDLE_DIR is required).
CMD ["python", "-m", "service"]
