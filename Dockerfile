# syntax=docker/dockerfile:1
# The kubeobs image: one image, two daemons (the chart runs `kubeobs collector` and `kubeobs dns`).
#   docker build -t ghcr.io/kubeobs/kubeobs:0.1.0 .
#   docker run --rm ghcr.io/kubeobs/kubeobs:0.1.0 collector --config /etc/kubeobs/collector.yaml
#   docker run --rm ghcr.io/kubeobs/kubeobs:0.1.0 dns --config /etc/kubeobs/dns.yaml
# VERSION must match pyproject.toml's version and the chart's appVersion (tests/chart/test_dockerfile.py).
ARG PYTHON_VERSION=3.11
ARG VERSION=0.1.0

# --- build: a virtualenv from binary wheels only (uvloop, orjson, aiohttp, pydantic-core, ...) ---------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY dnsserver ./dnsserver
COPY kubeobs ./kubeobs
# No compiler in this stage either: a dependency without a wheel for this platform fails the build
# instead of silently compiling.
RUN python -m venv /opt/kubeobs \
 && /opt/kubeobs/bin/pip install --upgrade pip \
 && /opt/kubeobs/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/kubeobs/bin/pip install --only-binary=:all: /tmp/wheels/kubeobs-*.whl \
 && /opt/kubeobs/bin/python -c "import uvloop, orjson, collector, dnsserver, kubeobs.cli" \
 && /opt/kubeobs/bin/pip uninstall --yes pip

# --- runtime: the slim base, the virtualenv, a non-root user ------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG VERSION
LABEL org.opencontainers.image.title="kubeobs" \
      org.opencontainers.image.description="kubeobs log collector and DNS server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.ref.name="ghcr.io/kubeobs/kubeobs:${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kubeobs \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kubeobs
COPY --from=build /opt/kubeobs /opt/kubeobs
ENV PATH=/opt/kubeobs/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# collector /metrics /healthz /readyz; DNS (unprivileged port, the Service maps 53); DNS health; DNS metrics
EXPOSE 2021/tcp 5353/udp 5353/tcp 8080/tcp 9153/tcp
ENTRYPOINT ["kubeobs"]
CMD ["--help"]
