# iotfleet's image, for the pods of `iotfleet k8s render` (and anyone who wants the CLI in a container):
#   docker build -t iotfleet .
#   docker run --rm iotfleet simulate --sites 2 --duration 30s
# It holds the CLI and what a shard's embedded local cloud needs: mosquitto, and a C compiler with
# mosquitto's plugin headers (the brokers' plugin is compiled at build time, into the user's cache).
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto gcc libc6-dev mosquitto-dev libmosquitto-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/iotfleet
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && rm -rf /opt/iotfleet/src

RUN useradd --create-home --uid 10001 iotfleet
USER iotfleet
WORKDIR /home/iotfleet
# compile the brokers' plugin now (cached by its source's hash), not in every pod at start
RUN python -c "from iotfleet.cloud.plugin import plugin_path; print(plugin_path())"

ENTRYPOINT ["iotfleet"]
CMD ["--help"]
