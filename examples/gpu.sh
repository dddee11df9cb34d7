#!/usr/bin/env bash
# bidsrecon on an NVIDIA GPU, with the image's CUDA variant. The host needs the NVIDIA driver
# (and, for Docker, the NVIDIA Container Toolkit); the CUDA libraries are inside the image.
#
#   examples/gpu.sh docker    BIDS_DIR OUTPUT_DIR WORK_DIR [bidsrecon options]
#   examples/gpu.sh apptainer BIDS_DIR OUTPUT_DIR WORK_DIR [bidsrecon options]
#   e.g. examples/gpu.sh docker /data/ds001506 /data/out /scratch/work \
#            --participant-label 01 --encoder vgg19 --image-size 224 --mixed-precision
#
# The CUDA image is built from the same Dockerfile with a build argument:
#   docker build --build-arg VARIANT=cuda --build-arg VERSION="$(cat version)" \
#       -t bidsrecon/bidsrecon:"$(cat version)"-cuda .          (or: make image VARIANT=cuda)
# and converted for Apptainer with
#   apptainer build bidsrecon-0.1.0-cuda.sif docker-daemon://bidsrecon/bidsrecon:0.1.0-cuda
#   (or docker://bidsrecon/bidsrecon:0.1.0-cuda from Docker Hub).
# --device cuda makes a missing GPU an error instead of a silent fall-back to the CPU.
set -euo pipefail

if [ "$#" -lt 4 ]; then
    echo "usage: $0 docker|apptainer BIDS_DIR OUTPUT_DIR WORK_DIR [bidsrecon options]" >&2
    exit 64
fi
engine=$1 bids_dir=$2 output_dir=$3 work_dir=$4
shift 4
DOCKER_IMAGE=${DOCKER_IMAGE:-bidsrecon/bidsrecon:0.1.0-cuda}
SIF=${SIF:-bidsrecon-0.1.0-cuda.sif}
mkdir -p "${output_dir}" "${work_dir}"

case "${engine}" in
    docker)
        # --gpus all: every GPU of the host (--gpus '"device=0"' for one). The user's uid so
        # that the outputs belong to them; --read-only with a /tmp tmpfs, as CI runs it.
        docker run --rm --gpus all --read-only --tmpfs /tmp \
            --user "$(id -u):$(id -g)" \
            --volume "${bids_dir}:/data:ro" \
            --volume "${output_dir}:/out" \
            --volume "${work_dir}:/work" \
            "${DOCKER_IMAGE}" /data /out participant -w /work --device cuda "$@"
        ;;
    apptainer|singularity)
        # --nv binds the host's NVIDIA driver libraries and devices into the container.
        "${engine}" run --nv --containall --cleanenv \
            --bind "${bids_dir}:/data:ro" \
            --bind "${output_dir}:/out" \
            --bind "${work_dir}:/work" \
            "${SIF}" /data /out participant -w /work --device cuda "$@"
        ;;
    *)
        echo "$0: unknown engine '${engine}' (docker, apptainer or singularity)" >&2
        exit 64
        ;;
esac
