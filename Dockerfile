# The broker's one image: API, worker and scheduler are the same code with another command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY providers ./providers
COPY workers ./workers
COPY migrations ./migrations
# Editable: the Alembic migrations stay beside the package (broker/db.py finds them there).
RUN pip install -e . && useradd --system --uid 10001 broker
USER broker
EXPOSE 8000
CMD ["broker", "serve", "--host", "0.0.0.0", "--no-embedded-workers"]
