# syntax=docker/dockerfile:1
# The lorafleet worker: one process per GPU (`lorafleet worker ...` or `lorafleet serve ...`).
# Build from the repository root (`make images` does):
#   docker build -f deploy/docker/worker.Dockerfile -t lorafleet-worker:0.1.0 .
# torch comes from PyPI: its Linux wheels carry their own CUDA libraries, so the base image
# only has to match the host's driver (CUDA 12.8 needs driver 570 or later).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# Unpinned apt packages: the base image's tag pins the distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/lorafleet
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY clients/ clients/
COPY controlplane/ controlplane/
COPY dataplane/ dataplane/
COPY kernels/ kernels/
COPY runtime/ runtime/
RUN /opt/lorafleet/bin/pip install --no-cache-dir '.[worker,s3,otlp]'

FROM ${CUDA_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/lorafleet lorafleet
COPY --from=build /opt/lorafleet /opt/lorafleet
COPY deploy/docker/healthcheck.py /opt/lorafleet/healthcheck.py
ENV PATH=/opt/lorafleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LORAFLEET_HEALTH_PORT=50051
USER 10001
WORKDIR /home/lorafleet
# gRPC (Generate, WorkerService, health), Prometheus /metrics, OpenAI HTTP (--http-port).
EXPOSE 50051 9400 8000
# A worker loads its weights before it reports SERVING: allow for a large model.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/lorafleet/healthcheck.py"]
ENTRYPOINT ["lorafleet"]
CMD ["worker", "--help"]
