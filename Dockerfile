# One image for every Hearth process (collector, feature service, simulator, demo).
FROM python:3.11-slim
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY hearth ./hearth
COPY collector ./collector
COPY features ./features
COPY device_sim ./device_sim
RUN uv sync --frozen --no-dev --no-cache
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
CMD ["python", "-m", "collector", "--help"]
