#!/bin/sh
# Build-stage helper shared by the Dockerfiles. Two folders, so that a source change rebuilds
# (and ships) only the small one:
#   install-python.sh deps      the virtualenv /opt/deinfer ($VENV_FLAGS) with the pinned
#                               dependencies of docker/requirements.lock (and $EXTRA_PACKAGES);
#                               /opt/app on its path
#   install-python.sh project   DeInfer itself from /src into /opt/app (scripts in /opt/app/bin)
# With WHEELHOUSE set (a build ARG), pip reads only /build/wheelhouse (--no-index): the build
# needs no network. Without it, pip installs the same pinned versions from PyPI.
set -eu
VENV=/opt/deinfer
PIP="$VENV/bin/pip --disable-pip-version-check --no-cache-dir"
SOURCE=""
if [ -n "${WHEELHOUSE:-}" ]; then
  SOURCE="--no-index --find-links /build/wheelhouse"
fi

case "${1:-}" in
  deps)
    if ! python3 -m venv --help >/dev/null 2>&1; then
      # Some CUDA/TensorRT bases ship Python without venv (this needs network: ordinary hosts).
      apt-get update && apt-get install -y --no-install-recommends python3-venv
      rm -rf /var/lib/apt/lists/*
    fi
    # shellcheck disable=SC2086
    python3 -m venv ${VENV_FLAGS:-} "$VENV"
    # shellcheck disable=SC2086
    $PIP install $SOURCE --requirement /build/requirements.lock ${EXTRA_PACKAGES:-}
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    echo /opt/app >"$site/deinfer-app.pth"
    ;;
  project)
    # shellcheck disable=SC2086
    $PIP install $SOURCE --no-deps --no-build-isolation --target /opt/app /src
    ;;
  *)
    echo "usage: $0 deps|project" >&2
    exit 2
    ;;
esac
