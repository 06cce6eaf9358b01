# `vitkit serve` on the CPU, as a non-root user, with the model folder mounted read-only at /model:
#
#   docker build -t vitkit-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/digits:/model:ro" -v "$PWD/keys.txt:/run/secrets/vitkit-keys:ro" \
#     --stop-timeout 40 vitkit-serve --api-key-file /run/secrets/vitkit-keys
#
# Arguments after the image name are added to `vitkit serve /model --host 0.0.0.0 --port 8000`.
# The image holds no model and no key: both come in through read-only mounts.

# Build stage: a virtual environment with the CPU build of PyTorch and vitkit's `serve` extra.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/vitkit
ENV PATH=/opt/vitkit/bin:$PATH
# CPU wheels from PyTorch's own index: no CUDA libraries in the image.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# The local package itself (its dependencies are the ranges of pyproject.toml): nothing to pin by version.
# hadolint ignore=DL3013
RUN pip install ".[serve]"

# Runtime stage: the environment only, no build files.
FROM python:3.11.13-slim-bookworm
RUN groupadd --system --gid 10001 vitkit \
    && useradd --system --uid 10001 --gid vitkit --no-create-home --shell /usr/sbin/nologin vitkit
COPY --from=build /opt/vitkit /opt/vitkit
ENV PATH=/opt/vitkit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
# The exec form makes vitkit PID 1, so `docker stop` (SIGTERM) drains the server before it exits.
ENTRYPOINT ["vitkit", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
CMD []
