# Production image: train and export the chosen zoo models, then serve them with the official
# TensorFlow Serving image (the real tensorflow_model_server), through a generated models.config.
#
#   docker build --build-arg MODELS="softmax_regression deep_cnn" -t keras-model-zoo-serving .
#   docker run -p 8500:8500 -p 8501:8501 keras-model-zoo-serving
#   docker run ... keras-model-zoo-serving --enable_batching     # extra flags are forwarded
#
# The target zoo-server serves the same models with our own server (python -m serving.server):
#
#   docker build --target zoo-server -t keras-model-zoo-server:2.21.0 .
#
# The target trainer is the train CLI alone (multi-worker training on Kubeflow, deploy/kubeflow).
#
# deploy/ runs either image on Kubernetes, tagged with TF_SERVING_VERSION
# (docker build -t keras-model-zoo-serving:2.21.0 .; see deploy/overlays/*/kustomization.yaml).
#
# TF_SERVING_VERSION matches the tensorflow pin in pyproject.toml; the official image tags are
# plain versions (e.g. 2.18.0, 2.18.0-gpu).

ARG TF_SERVING_VERSION=2.21.0

# ---------------------------------------------------------------- trainer: the train CLI
# The image deploy/kubeflow/tfjob.yaml runs, one worker a pod (the TFJob operator sets TF_CONFIG):
#   docker build --target trainer -t keras-model-zoo-trainer:2.21.0 .
FROM python:3.11-slim-bookworm AS trainer
ENV PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml ./
COPY zoo ./zoo
COPY training ./training
COPY serving ./serving
COPY analysis ./analysis
RUN pip install --no-cache-dir .
ENTRYPOINT ["python", "-m", "training.train"]
CMD ["--list"]

# ---------------------------------------------------------------- build: train and export
FROM trainer AS build
ARG MODELS="softmax_regression"
ARG TRAIN_ARGS=""
# Each model is trained with its registered recipe (TRAIN_ARGS may shorten it) and exported as
# /models/NAME/1; the config lists them all under the image's /models.
# hadolint ignore=SC2086
RUN for model in $MODELS; do \
        python -m training.train "$model" $TRAIN_ARGS --export-dir /models \
            --run-dir "/tmp/runs/$model" || exit 1; \
    done \
    && python -m serving.config /models --base-path-prefix /models > /models/models.config \
    && cat /models/models.config

# ---------------------------------------------------------------- native: predictd
# The native data plane (docs/ARCHITECTURE.md, "The native data plane"), built as `make native`
# builds it: Debian 12's toolchain (the base images are pinned to bookworm, whose release sets
# the versions, hence no pins: zoo-server must run predictd on the libraries it was built
# against), C++ stubs generated from the installed packages' descriptors, TensorFlow's C API
# headers from the wheel (the trainer stage has it installed; PY is its python, no .venv).
FROM trainer AS native
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make pkg-config libgrpc++-dev \
        protobuf-compiler-grpc libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
COPY Makefile ./
RUN make native PY=python NATIVE_PY_READY=

# ---------------------------------------------------------------- zoo-server: our own server
# Only serving/ is installed: it never imports zoo or training (docs/ARCHITECTURE.md). It binds
# 0.0.0.0 (its default is 127.0.0.1) and reads the same models.config as TF Serving below.
# predictd comes from the native stage with the libraries it links (libgrpc++ pulls the rest);
# --data_plane=auto runs it where it can serve the flags given (CMD may say
# --data_plane=python), and the start-up line says which plane answers each version.
FROM python:3.11-slim-bookworm AS zoo-server
ENV PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1 \
    ZOO_PREDICTD=/usr/local/bin/predictd
WORKDIR /src
COPY pyproject.toml ./
COPY serving ./serving
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgrpc++1.51 libprotobuf32 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir . \
    && useradd --system --no-log-init --uid 10001 --home-dir /nonexistent zoo
COPY --from=native /src/build/native/predictd /usr/local/bin/predictd
# Its libraries are all here: with no flags it prints its usage and exits 2 (the loader's 127
# otherwise).
RUN rc=0; /usr/local/bin/predictd >/dev/null 2>&1 || rc=$?; test "$rc" -eq 2
COPY --from=build /models /models
USER 10001
EXPOSE 8500 8501
ENTRYPOINT ["python", "-m", "serving.server", "--host=0.0.0.0", "--port=8500", \
            "--rest_api_port=8501", "--model_config_file=/models/models.config", \
            "--file_system_poll_wait_seconds=60", "--data_plane=auto"]
CMD []

# ---------------------------------------------------------------- serve: TF Serving
FROM tensorflow/serving:${TF_SERVING_VERSION}
ARG HEALTH_MODEL=softmax_regression
ENV HEALTH_MODEL=${HEALTH_MODEL}
COPY --from=build /models /models
EXPOSE 8500 8501
# The REST status of one served model must say AVAILABLE (bash's /dev/tcp: the image has no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8501 && printf 'GET /v1/models/%s HTTP/1.0\\r\\n\\r\\n' \"$HEALTH_MODEL\" >&3 && grep -q AVAILABLE <&3"]
ENTRYPOINT ["/usr/bin/tensorflow_model_server", "--port=8500", "--rest_api_port=8501", \
            "--model_config_file=/models/models.config", "--file_system_poll_wait_seconds=60"]
CMD []
