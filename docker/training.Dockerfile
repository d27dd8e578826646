# syntax=docker/dockerfile:1
# fineship training image: the SageMaker bring-your-own-container contract for training jobs.
#
# SageMaker runs `docker run <image> train`; `train` (docker/train) hands over to
# `python -m components.training.sagemaker_entry` (written separately, issue 6), which reads
# /opt/ml/input and writes the model package to /opt/ml/model.
# Build from the repository root:
#   docker build -f docker/training.Dockerfile -t fineship-training .
# For GPU instances, pick a CUDA build of the same torch release:
#   docker build -f docker/training.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY components ./components
COPY flows ./flows
COPY tasks ./tasks
COPY infra ./infra
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FINESHIP_OPT_ML=/opt/ml

# torch first, pinned as in pyproject.toml, from the index chosen above (CPU by default).
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX_URL}"

# fineship with all its dependencies: training, evaluation and the registry client.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/fineship-*.whl \
 && rm -rf /tmp/wheels

COPY --chmod=0755 docker/train /usr/local/bin/train

# Non-root, numeric so a runtime (Kubernetes runAsNonRoot, say) can check it without /etc/passwd.
# Caveat to verify on a real job: SageMaker's BYOC guide says it expects containers to run as root;
# training must write /opt/ml/model, /opt/ml/output and /opt/ml/checkpoints, which SageMaker mounts.
RUN groupadd --gid 1000 fineship \
 && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin fineship \
 && mkdir -p /opt/ml/input /opt/ml/model /opt/ml/output /opt/ml/checkpoints \
 && chown -R fineship /opt/ml
USER 1000:1000
WORKDIR /home/fineship

CMD ["train"]
