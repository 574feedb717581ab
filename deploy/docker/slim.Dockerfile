# syntax=docker/dockerfile:1
# The slim lorafleet image, no torch: control plane, gateway and the admin CLI.
#   docker run lorafleet:0.1.0 controlplane --etcd http://etcd:2379 --host 0.0.0.0
#   docker run -e LORAFLEET_HEALTH_PORT=50050 lorafleet:0.1.0 gateway --controlplane cp:50051 --host 0.0.0.0
#   docker run lorafleet:0.1.0 adapter list --controlplane cp:50051
# Build from the repository root (`make images` does):
#   docker build -f deploy/docker/slim.Dockerfile -t lorafleet:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN python -m venv /opt/lorafleet
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY clients/ clients/
COPY controlplane/ controlplane/
COPY dataplane/ dataplane/
COPY kernels/ kernels/
COPY runtime/ runtime/
RUN /opt/lorafleet/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --create-home --home-dir /home/lorafleet lorafleet
COPY --from=build /opt/lorafleet /opt/lorafleet
COPY deploy/docker/healthcheck.py /opt/lorafleet/healthcheck.py
ENV PATH=/opt/lorafleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LORAFLEET_HEALTH_PORT=50051
USER 10001
WORKDIR /home/lorafleet
# Control plane gRPC; gateway gRPC, its OpenAI HTTP and its /metrics.
EXPOSE 50051 50050 8080 9401
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/lorafleet/healthcheck.py"]
ENTRYPOINT ["lorafleet"]
CMD ["--help"]
