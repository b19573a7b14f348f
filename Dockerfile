# The cdc image of the Docker Compose stack (docker-compose.yml): the merge job (`cdc job
# streaming` on Beam's DirectRunner) and the one-shot setup. Every dependency comes from the
# lock at its exact version and hash; the project itself is installed without resolving anything.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_GCE_CHECK=true \
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false

WORKDIR /app

# the lock first, so the dependency layer is rebuilt only when the lock changes
COPY requirements.lock ./
RUN python -m pip install --require-hashes --no-deps -r requirements.lock

# then the project (hatchling, its build backend, is in the lock)
COPY pyproject.toml README.md ./
COPY state_models/ state_models/
COPY connectors/ connectors/
COPY merge_jobs/ merge_jobs/
COPY cdc/ cdc/
RUN python -m pip install --no-deps --no-build-isolation . && python -m pip check

RUN useradd --create-home --uid 10001 cdc \
    && mkdir -p /var/lib/cdc \
    && chown cdc:cdc /var/lib/cdc
USER cdc
WORKDIR /home/cdc

ENTRYPOINT ["cdc"]
CMD ["--help"]
