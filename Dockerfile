# PruneLab server image. CPU torch by default; for CUDA:
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PRUNELAB_DATA_DIR=/data

RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 prunelab \
    && mkdir -p /data && chown prunelab:prunelab /data

WORKDIR /opt/prunelab
# torch first, pinned, from the chosen index: nothing later may replace it.
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY pyproject.toml README.md ./
COPY app ./app
COPY alembic ./alembic
COPY templates ./templates
COPY static ./static
RUN pip install -e '.[ray]' && pip install --no-deps onnx2torch==1.5.15

USER prunelab
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/api/health || exit 1
CMD ["prunelab", "serve", "--host", "0.0.0.0", "--port", "8000"]
