# wecom-hub as a container. With WECOM_HUB_DATABASE_URL (and WECOM_HUB_SECRET_KEY) set it uses
# that Postgres; without, it runs the embedded Postgres in /data (mount a volume there).
FROM python:3.12-slim

RUN useradd --create-home --uid 10001 wecomhub && mkdir /data && chown wecomhub /data
WORKDIR /srv/wecom-hub
COPY pyproject.toml README.md ./
COPY app app
COPY migrations migrations
RUN pip install --no-cache-dir .

USER wecomhub
ENV WECOM_HUB_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')"
CMD ["wecom-hub", "serve", "--host", "0.0.0.0", "--port", "8000"]
