# syntax=docker/dockerfile:1
# fineship inference image: the SageMaker bring-your-own-container contract.
#
# SageMaker runs `docker run <image> serve`; `serve` (docker/serve) starts the server on 0.0.0.0:8080
# with the model package that SageMaker extracted from model.tar.gz to /opt/ml/model.
# Build from the repository root (docker/serving.Dockerfile.dockerignore keeps the context small):
#   docker build -f docker/serving.Dockerfile -t fineship-serving .
# Try it on a package directory:
#   docker run --rm -p 127.0.0.1:8080:8080 -v "$PWD/my-package:/opt/ml/model:ro" fineship-serving serve

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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    FINESHIP_OPT_ML=/opt/ml

# CPU torch first, pinned as in pyproject.toml, so nothing below can pull a multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Only what serving imports, then fineship itself without the training and orchestration stack
# (Prefect, MLflow, Great Expectations are not needed to answer /invocations).
COPY docker/requirements-serving.txt /tmp/requirements-serving.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir -r /tmp/requirements-serving.txt \
 && pip install --no-cache-dir --no-deps /tmp/wheels/fineship-*.whl \
 && rm -rf /tmp/wheels /tmp/requirements-serving.txt

COPY --chmod=0755 docker/serve /usr/local/bin/serve

# Non-root, numeric so a runtime (Kubernetes runAsNonRoot, say) can check it without /etc/passwd.
# Caveat to verify on a real job: SageMaker's BYOC guide says it expects containers to run as root;
# serving only needs to read /opt/ml/model (as long as SageMaker extracts it readable to all).
RUN groupadd --gid 1000 fineship \
 && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin fineship \
 && mkdir -p /opt/ml/model \
 && chown -R fineship /opt/ml
USER 1000:1000
WORKDIR /home/fineship

EXPOSE 8080
# 200 once the model has loaded; SageMaker itself polls /ping, this is for `docker run` and compose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('SAGEMAKER_BIND_TO_PORT', '8080'), timeout=4)"]
CMD ["serve"]
