# cachesvc server image: `make image` (docker or podman), tested end to end by `make container-test`.
#
# `make image` first prepares, on the host, the one input this file copies in:
#   build/wheelhouse/       pinned runtime wheels + the project's own wheels (scripts/wheelhouse.py), so the
#                           build installs with `pip --no-index`: no network, no proxy certificates, no compiler;
#                           export/ adds what the torch-free model export needs (onnx, safetensors, the model's
#                           package), used by the `model` stage only
# The `model` stage exports the default model inside the build (`cachesvc model export`, no torch), so the host
# needs neither torch nor an exported model. The runtime stage holds Python, one venv (onnxruntime, tokenizers,
# faiss-cpu, grpcio, numpy, msgpack, prometheus-client, protobuf, cachesvc, cachesvc-client) and the model; no
# pip, torch, onnx or build tools.

ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INDEX=1
# Dependencies first, in their own layer: it stays cached while only the project changes.
COPY build/wheelhouse/deps/ /wheelhouse/deps/
RUN python -m venv /opt/cachesvc \
 && /opt/cachesvc/bin/python -m pip install --no-deps --find-links /wheelhouse/deps \
        -r /wheelhouse/deps/requirements.txt
COPY build/wheelhouse/project/ /wheelhouse/project/
RUN /opt/cachesvc/bin/python -m pip install --no-deps /wheelhouse/project/*.whl \
 && /opt/cachesvc/bin/python -m pip uninstall -y -q pip setuptools \
 && find /opt/cachesvc/lib -type d -path '*/site-packages/numpy/*' -name tests -prune -exec rm -rf {} + \
 && /opt/cachesvc/bin/python -c "import cachesvc.app, cachesvc.cli, cachesvc_client, onnxruntime, tokenizers, \
faiss, grpc_health.v1.health, grpc_reflection.v1alpha.reflection, prometheus_client, msgpack"

# The default model, exported by the torch-free route. The export's own packages go to a throwaway directory of
# this stage (installed by a throwaway venv's pip: a Debian-based stand-in for BASE has no system pip); the
# runtime stage below copies the build stage's venv, without them, and only /model from here.
FROM build AS model
COPY build/wheelhouse/export/ /wheelhouse/export/
RUN python -m venv /opt/pip \
 && /opt/pip/bin/python -m pip install -q --no-deps --target /opt/export --find-links /wheelhouse/export \
        -r /wheelhouse/export/requirements.txt \
 && PYTHONPATH=/opt/export /opt/cachesvc/bin/python -m cachesvc model export --out /model

FROM ${BASE}
# A home of its own outside the volume: onnxruntime keeps a small ~/.cache/Microsoft/... there.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/cachesvc --shell /usr/sbin/nologin cachesvc \
 && mkdir -p /data \
 && chown cachesvc:cachesvc /data
COPY --from=build /opt/cachesvc /opt/cachesvc
COPY --from=model /model/ /opt/cachesvc/model/
# Every setting is a CACHESVC_* variable (see `cachesvc serve --help`); these are the container's defaults.
ENV PATH=/opt/cachesvc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CACHESVC_HOST=0.0.0.0 \
    CACHESVC_PORT=50051 \
    CACHESVC_METRICS_PORT=9464 \
    CACHESVC_METRICS_HOST=0.0.0.0 \
    CACHESVC_DATA_DIR=/data \
    CACHESVC_MODEL_DIR=/opt/cachesvc/model \
    CACHESVC_LOG_FORMAT=json
USER cachesvc
WORKDIR /home/cachesvc
VOLUME ["/data"]
EXPOSE 50051 9464
# The server drains in-flight calls on SIGTERM (CACHESVC_GRACE_SECONDS, default 10 s) and exits 0; give the
# engine's stop timeout a little more than that (`docker stop -t 15`).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD cachesvc health --timeout 3 --target "127.0.0.1:${CACHESVC_PORT}" || exit 1
ENTRYPOINT ["cachesvc"]
CMD ["serve"]
