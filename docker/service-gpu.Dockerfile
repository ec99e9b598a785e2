# syntax=docker/dockerfile:1
# The serving image for NVIDIA GPUs: same code and settings as docker/service.Dockerfile, on a CUDA 12
# + cuDNN 9 runtime base, with onnxruntime-gpu instead of onnxruntime (the two wheels provide the same
# `onnxruntime` module and conflict: only onnxruntime-gpu is installed here). Still no torch.
#
#   docker build -f docker/service-gpu.Dockerfile -t lmindexer-service-gpu .
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/bundles:/bundles:ro" \
#       -e LMINDEXER_BUNDLE_DIR=/bundles/demo lmindexer-service-gpu
#
# Needs an NVIDIA driver for CUDA 12 on the host and the NVIDIA Container Toolkit.

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
# The base dependencies with onnxruntime replaced by the `gpu` extra (onnxruntime-gpu).
RUN python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
base = [d for d in p['dependencies'] if re.split(r'[<>=!~\[; ]', d)[0] != 'onnxruntime']; \
print('\n'.join(base + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY lmindexer ./lmindexer
COPY trie ./trie
COPY bundle ./bundle
COPY service ./service
# --no-deps: the wheel's metadata names onnxruntime, which must not come back next to onnxruntime-gpu.
RUN pip install --no-deps . \
    && python -c "import service, bundle, trie, lmindexer.cli, onnxruntime; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers()" \
    && ! pip show onnxruntime >/dev/null 2>&1

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LMINDEXER_HOST=0.0.0.0 \
    LMINDEXER_PORT=8000 \
    LMINDEXER_EXECUTION_PROVIDER=cuda
RUN groupadd --system --gid 10001 lmindexer \
    && useradd --system --uid 10001 --gid lmindexer --home-dir /app --shell /usr/sbin/nologin lmindexer \
    && mkdir -p /app/var /bundles \
    && chown -R lmindexer:lmindexer /app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
VOLUME ["/app/var"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LMINDEXER_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "service"]
