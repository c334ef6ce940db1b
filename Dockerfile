# Production image: Triton 24.10 (server 2.51.0) with triton-guard's backends.
# Versions come from src/triton_guard/pins.toml; tests/unit/test_image.py
# fails when this file drifts from it.
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${BASE_IMAGE}

# Third-party packages first: a multi-GB layer that changes less often than
# our code. --require-hashes rejects any file but the locked one;
# --only-binary keeps pip from building (and fetching unhashed build tools).
COPY docker/requirements-cuda.txt /tmp/requirements-cuda.txt
RUN python3 -m pip install --no-cache-dir --require-hashes --only-binary :all: \
        -r /tmp/requirements-cuda.txt \
    && rm /tmp/requirements-cuda.txt

# The package itself. Its runtime dependencies are in the lock above or in the
# base image (tritonserver stands in for nvidia-pytriton), hence --no-deps;
# --no-build-isolation builds with the locked setuptools instead of fetching one.
WORKDIR /opt/triton-guard
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m pip install --no-deps --no-cache-dir --no-build-isolation .

# Triton finds Python-based backends by directory name under its backend dir;
# they ship in the package (`triton-guard backend-dir`), linked in place.
RUN backends="$(triton-guard backend-dir)" \
    && ln -s "${backends}/guard" /opt/tritonserver/backends/guard \
    && ln -s "${backends}/canary" /opt/tritonserver/backends/canary
COPY model_repository /opt/triton-guard/model_repository

ENV TRITON_GUARD_TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    TRITON_GUARD_BACKEND_DIR=/opt/tritonserver/backends

# HTTP, gRPC, metrics (triton_guard.defaults).
EXPOSE 8000 8001 8002

# triton-server, created by the base image with uid/gid 1000 (Triton's
# build.py asserts both). Numeric so Kubernetes' runAsNonRoot can verify it.
# Everything copied above stays root-owned: the server cannot rewrite its code.
USER 1000:1000

# No HEALTHCHECK: Kubernetes probes Triton's /v2/health endpoints directly.
# All interfaces: the pod's ports are reached from outside the container
# (a local `triton-guard serve` binds 127.0.0.1). The model-repository,
# shared-memory, trace and logging APIs need the key header; the key comes
# from $TRITON_GUARD_API_KEY_FILE (the Deployment mounts a Secret there) or
# $TRITON_GUARD_API_KEY, else one is generated per run (README "Security").
ENTRYPOINT ["triton-guard", "serve"]
CMD ["--model-repository", "/opt/triton-guard/model_repository", "--gpu", "--host", "0.0.0.0"]
