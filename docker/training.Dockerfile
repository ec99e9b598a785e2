# syntax=docker/dockerfile:1
# The training image: PyTorch with CUDA 12 + cuDNN 9, the `train` extra, the vendored data, and the
# `lmindexer` CLI as entry point. One process per GPU under torchrun (DistributedDataParallel); the
# same image runs on CPU. Outputs (runs, bundles) go to mounted volumes, never into the image.
#
#   docker build -f docker/training.Dockerfile -t lmindexer-training .
#   docker run --rm -v "$PWD/bundles:/app/bundles" lmindexer-training build-demo --out bundles/demo
#   docker run --rm --gpus all --ipc=host -v "$PWD/runs:/app/runs" --entrypoint torchrun \
#       lmindexer-training --nproc_per_node=4 -m lmindexer learn-ids ...
#
# The base's torch satisfies the `train` extra's range, so pip does not replace it.

ARG TORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
FROM ${TORCH_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
WORKDIR /app
# Dependencies first, from pyproject.toml alone: base + train (torch is already in the base image).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['train']))" > /tmp/requirements.txt \
    && TORCH_BEFORE="$(python -c 'import torch; print(torch.__version__)')" \
    && pip install -r /tmp/requirements.txt \
    && test "$(python -c 'import torch; print(torch.__version__)')" = "$TORCH_BEFORE"
# The code and the vendored data sets (small). Editable install: the readers find data/ next to the code.
COPY lmindexer ./lmindexer
COPY trie ./trie
COPY bundle ./bundle
COPY service ./service
COPY training ./training
COPY data ./data
RUN pip install --no-deps -e . \
    && python -c "import torch, training, lmindexer.cli; print('torch', torch.__version__)"
# Runs and bundles are written here; mount volumes over them.
RUN mkdir -p /app/runs /app/bundles
ENTRYPOINT ["lmindexer"]
CMD ["--help"]
