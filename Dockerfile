# One image for web, worker, beat and Flower; docker-compose.yml picks the start script.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: this layer is rebuilt only when a requirements file changes.
COPY requirements/ requirements/
RUN pip install -r requirements/prod.txt

# Files the app runs from, listed so that a local .venv, var/ or .env never ends up in the image.
COPY manage.py ./
COPY project/ project/
COPY monitoring/ monitoring/
COPY pipeline/ pipeline/
COPY compose/ compose/

# Not root. /data is Flower's volume: a named volume takes the owner of the directory it mounts on.
RUN useradd --create-home --uid 10001 newsbeat \
    && mkdir -p /app/var /data \
    && chown newsbeat:newsbeat /app/var /data
USER newsbeat

EXPOSE 8000 5555
CMD ["/app/compose/web.sh"]
