# syntax=docker/dockerfile:1
# Multi-stage image of the agentloop server, worker and CLI (see "Production deployment" in the README).
#   docker build -t agentloop .                       API replicas (CPU) and the embedded fallback engine
#   docker build --build-arg TORCH_INDEX_URL=... .    choose the torch wheel index (CPU or a CUDA build)

# --- build: compile llama-cpp-python and install everything into a virtual environment -------------------
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
# Portable CPU flags: GGML_NATIVE would tune for the build host and can crash elsewhere (TECH_NOTES).
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
# Empty: torch from the default index (a CUDA build on x86-64 Linux, what the GPU worker wants).
ARG TORCH_INDEX_URL=""
ENV VIRTUAL_ENV=/opt/venv PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
    && CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip install . \
    && python -c "import llama_cpp, agentloop; print('llama-cpp-python', llama_cpp.__version__)"

# --- runtime: the virtual environment and a non-root user, no compilers -------------------------------------
FROM python:3.11-slim-bookworm AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 agentloop \
    && useradd --system --uid 10001 --gid agentloop --home-dir /home/agentloop --create-home agentloop \
    && mkdir -p /data /cache \
    && chown agentloop:agentloop /data /cache
COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    AGENTLOOP_DATA_DIR=/data \
    AGENTLOOP_CACHE_DIR=/cache \
    AGENTLOOP_HOST=0.0.0.0 \
    AGENTLOOP_PORT=8000
USER agentloop
WORKDIR /home/agentloop
VOLUME ["/data", "/cache"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
ENTRYPOINT ["agentloop"]
CMD ["serve"]
