# syntax=docker/dockerfile:1
# One image for `serve` (the default), `worker`, `migrate` and `sim serve`:
#   docker build -t wecom-hub .
#   docker run -v wecom-hub-data:/data -p 8000:8000 wecom-hub            embedded Postgres in /data
#   docker run -e WECOM_HUB_DATABASE_URL=… -e WECOM_HUB_SECRET_KEY=… wecom-hub worker
# docker-compose.yml runs it beside its own Postgres. tests/test_container.py runs the build
# stage's RUN below as written, and checks the rest of this file.

# The Python the test suite runs on: the image ships what was tested.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/wecom-hub
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app app/
COPY migrations migrations/
# A wheel, not the source tree: the venv holds an ordinary install and nothing else, so it can
# be copied alone into the final stage. Every dependency is a binary wheel, so no compiler.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir dist . \
    && python -m venv "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/python" -m pip install dist/*.whl

FROM python:${PYTHON_VERSION}-slim-bookworm
# A venv is not relocatable: it lives at the same path as in the build stage, owned by root
# and read-only for the service, so its modules are compiled at install and never written.
COPY --from=build /opt/wecom-hub /opt/wecom-hub
# The embedded Postgres refuses to run as root, and nothing here needs root: a numeric user,
# so that Kubernetes' runAsNonRoot can check it. /data is its own, for the embedded mode.
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home wecomhub \
    && install --directory --owner=wecomhub --group=wecomhub --mode=0700 /data
ENV VIRTUAL_ENV=/opt/wecom-hub \
    PATH=/opt/wecom-hub/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WECOM_HUB_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8000
# Liveness only (the process answers), not /readyz: an orchestrator restarting a replica
# because Postgres is down would not bring Postgres back. The slim base has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["wecom-hub"]
CMD ["serve", "--host", "0.0.0.0"]
