# bidsrecon BIDS App.
#
#   docker build --build-arg VERSION="$(cat version)" -t bidsrecon/bidsrecon:"$(cat version)" .
#   docker run --rm --read-only --tmpfs /tmp -v /data:/data:ro -v /out:/out \
#       bidsrecon/bidsrecon:"$(cat version)" /data /out participant
#
# The image runs with a read-only root file system: everything the app or its libraries cache
# goes under /tmp (a tmpfs in Docker, the host's /tmp in Apptainer), results go to the mounted
# output and work directories only.
FROM python:3.11.14-slim-bookworm

# No pip cache in the image, no .pyc written at run time (the root file system is read-only),
# no host PYTHONPATH leaking in, no Nipype phone-home; TORCH_HOME holds the baked-in weights.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH="" \
    NIPYPE_NO_ET=1 \
    TORCH_HOME=/opt/torch

# The repository's pins, so the image runs exactly what `make test` tested. torch and
# torchvision come from PyPI: on Linux x86_64 that wheel is the CUDA-capable build (it pulls
# NVIDIA's CUDA runtime wheels), so `docker run --gpus all` uses a GPU and the same image runs
# on CPU without one. setuptools is pinned here because the package is built without build
# isolation (as `make install` does), so nothing unpinned is fetched for the build.
COPY requirements.txt /opt/bidsrecon/requirements.txt
RUN pip install --no-cache-dir setuptools==84.2.1 \
 && pip install --no-cache-dir -r /opt/bidsrecon/requirements.txt

# Bake the VGG19 ImageNet weights into TORCH_HOME so the container works offline; torchvision
# checks the file's hash prefix on download. This layer comes before the package's source so
# code changes do not download it again.
RUN python -c "import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')" \
 && chmod -R a+rX /opt/torch

# pyproject.toml reads the version from `version` and the long description from README.md.
COPY pyproject.toml README.md version /tmp/bidsrecon-src/
COPY bidsrecon /tmp/bidsrecon-src/bidsrecon
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/bidsrecon-src \
 && rm -rf /tmp/bidsrecon-src \
 && bidsrecon --version

# Any user (Docker's --user, Apptainer's host user) must be able to run the app, so caches and
# config go to /tmp explicitly rather than only through HOME: Apptainer replaces HOME with the
# host's home directory.
ENV HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIPYPE_CONFIG_DIR=/tmp/nipype \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    DENO_DIR=/tmp/deno

# A numeric user, so a host (or runAsNonRoot) can tell it is not root without the image's passwd.
RUN groupadd --gid 1000 bidsrecon \
 && useradd --uid 1000 --gid 1000 --no-create-home --no-log-init \
        --shell /usr/sbin/nologin bidsrecon
USER 1000:1000
# Nipype writes crash files into the working directory unless told otherwise.
WORKDIR /tmp

# Labels last: a new version or commit then rebuilds only this layer.
ARG VERSION=unknown
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="bidsrecon" \
      org.opencontainers.image.description="BIDS App: reconstruct seen and imagined images from fMRI (Shen et al. 2019, deep image reconstruction)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["bidsrecon"]
