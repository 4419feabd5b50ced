# DeInfer worker on an NVIDIA GPU: a CUDA + TensorRT base (TensorRT's Python bindings come
# with it; the venv sees them through --system-site-packages). Build from the repository root:
#   docker build -f docker/worker-gpu.Dockerfile -t deinfer-worker-gpu .
# Run it with the NVIDIA Container Toolkit (docker-compose.yml reserves one GPU per worker and
# shares the MPS control daemon's pipe directory and IPC namespace with it).
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3

# deps: the pinned dependencies (rebuilt only when docker/requirements.lock changes).
FROM ${BASE_IMAGE} AS deps
# A folder of wheels (for the base image's Python) inside the build context; empty: PyPI.
ARG WHEELHOUSE=
COPY docker/requirements.lock docker/install-python.sh /build/
# Without a wheelhouse this copies the lock a second time, harmlessly (COPY needs a source).
COPY ${WHEELHOUSE:-docker/requirements.lock} /build/wheelhouse/
# The GPU extra of pyproject.toml but TensorRT (the base has it): cuda-python's major version
# must match the base image's CUDA (12.x for tensorrt:25.01-py3).
ARG GPU_PACKAGES="cuda-python==12.8.0 nvidia-ml-py==12.570.86"
RUN WHEELHOUSE="${WHEELHOUSE}" VENV_FLAGS=--system-site-packages EXTRA_PACKAGES="${GPU_PACKAGES}" \
    sh /build/install-python.sh deps

# build: DeInfer itself, into /opt/app.
FROM deps AS build
ARG WHEELHOUSE=
COPY pyproject.toml README.md /src/
COPY deinfer /src/deinfer
COPY services /src/services
RUN WHEELHOUSE="${WHEELHOUSE}" sh /build/install-python.sh project

# The source (which changes most) is copied last: a source change rebuilds one small layer.
FROM ${BASE_IMAGE}
# MPS clients must run as the same user as the MPS control daemon: docker-compose.yml runs
# the daemon from this image with this UID.
ARG UID=10001
RUN useradd --uid "${UID}" --user-group --create-home --shell /usr/sbin/nologin deinfer \
    && mkdir -p /models /tmp/nvidia-mps /tmp/nvidia-log \
    && chown deinfer:deinfer /models /tmp/nvidia-mps /tmp/nvidia-log
COPY --from=deps /opt/deinfer /opt/deinfer
ENV PATH=/opt/app/bin:/opt/deinfer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEINFER_MODEL_REPOSITORY=/models \
    DEINFER_WORKER_DEVICE=tensorrt \
    DEINFER_HEALTH_ADDRESS=127.0.0.1:8200 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps \
    CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-log
USER deinfer
WORKDIR /home/deinfer
EXPOSE 8200 8201
HEALTHCHECK --interval=5s --timeout=4s --start-period=120s --retries=3 \
    CMD ["python", "-m", "deinfer.health", "--timeout", "3"]
CMD ["python", "-m", "services.worker"]
COPY --from=build /opt/app /opt/app
