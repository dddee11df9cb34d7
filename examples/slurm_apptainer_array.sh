#!/usr/bin/env bash
# bidsrecon on a SLURM cluster with Apptainer (or Singularity): one participant per array task.
#
# Build the image once (on a machine with Docker, or straight from Docker Hub):
#   apptainer build bidsrecon-0.1.0.sif docker://bidsrecon/bidsrecon:0.1.0
#   (GPU nodes: docker://bidsrecon/bidsrecon:0.1.0-cuda, and set USE_GPU=1 below)
# Submit one task per participant: the participant_id rows of participants.tsv or, when the
# dataset has none (as ds001506), its sub-* folders in sorted order, as bidsrecon finds them:
#   mkdir -p logs
#   sbatch --array=1-$(ls -d /data/ds001506/sub-*/ | wc -l) \
#       examples/slurm_apptainer_array.sh [more bidsrecon options, e.g. --roi VC]
# The settings below can be changed here or given in the environment of sbatch, which passes
# it on:  BIDS_DIR=/data/ds001506 OUTPUT_DIR=/data/out sbatch --array=1-3 ...
#
# Each task runs `participant` for one subject with its own work directory (a rerun reuses it),
# tells bidsrecon the CPUs and memory SLURM gave it, and writes into the shared OUTPUT_DIR
# (participant jobs may write there in parallel). Run the group level once they all finished:
#   sbatch --dependency=afterok:<array job id> --wrap "apptainer run --containall --cleanenv \
#       -B /data/ds001506:/data:ro -B /data/out:/out bidsrecon-0.1.0.sif /data /out group"
#
#SBATCH --job-name=bidsrecon
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=logs/bidsrecon_%A_%a.log
# GPU nodes (with USE_GPU=1 and the -cuda image): #SBATCH --gres=gpu:1
set -euo pipefail

BIDS_DIR=${BIDS_DIR:-/data/ds001506}
OUTPUT_DIR=${OUTPUT_DIR:-/data/derivatives/bidsrecon}
WORK_ROOT=${WORK_ROOT:-/scratch/${USER:-$(id -un)}/bidsrecon-work}
IMAGE=${IMAGE:-$HOME/images/bidsrecon-0.1.0.sif}
# Optional: the folder of stimulus images, when they are not in BIDS_DIR/stimuli.
STIMULI_DIR=${STIMULI_DIR:-}
# apptainer, or singularity on older clusters (same options).
APPTAINER=${APPTAINER:-apptainer}
USE_GPU=${USE_GPU:-0}

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "submit this script as an array job: sbatch --array=1-N $0 (N: participants)" >&2
    exit 64
fi

# The participant of this task, without its "sub-" prefix: row SLURM_ARRAY_TASK_ID of
# participants.tsv's participant_id column (header excluded) or, without participants.tsv, the
# SLURM_ARRAY_TASK_ID-th sub-* folder of BIDS_DIR in sorted (C locale) order.
PARTICIPANTS="${BIDS_DIR}/participants.tsv"
LABEL=""
if [ -f "${PARTICIPANTS}" ]; then
    SOURCE="${PARTICIPANTS}"
    HINT="is --array within 1..number of participants, and is there a participant_id column?"
    LABEL=$(awk -F'\t' -v row="${SLURM_ARRAY_TASK_ID}" '
        { sub(/\r$/, "") }
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") column = i; next }
        column && NR == row + 1 { print $column }
    ' "${PARTICIPANTS}")
else
    SOURCE="the sub-* folders of ${BIDS_DIR}, which has no participants.tsv"
    HINT="is --array within 1..number of sub-* folders?"
    if [[ "${SLURM_ARRAY_TASK_ID}" =~ ^[1-9][0-9]*$ ]]; then
        LABEL=$(cd "${BIDS_DIR}" 2>/dev/null && LC_ALL=C && shopt -s nullglob &&
                folders=(sub-*/) && printf '%s\n' "${folders[@]%/}" | sed -n "${SLURM_ARRAY_TASK_ID}p") || true
    fi
fi
LABEL=${LABEL#sub-}
if [ -z "${LABEL}" ]; then
    echo "no participant for array task ${SLURM_ARRAY_TASK_ID} in ${SOURCE}: ${HINT}" >&2
    exit 66
fi

# CPUs and memory of this task. SLURM gives memory in MB: SLURM_MEM_PER_NODE for --mem,
# SLURM_MEM_PER_CPU for --mem-per-cpu. bidsrecon gets 90% of it (in whole GB), leaving room
# for Python, the container and the page cache so that SLURM does not kill the task; without
# a memory request, no --mem (bidsrecon then assumes no limit).
NPROCS=${SLURM_CPUS_PER_TASK:-1}
MEM_MB=""
if [ -n "${SLURM_MEM_PER_NODE:-}" ]; then
    MEM_MB=${SLURM_MEM_PER_NODE}
elif [ -n "${SLURM_MEM_PER_CPU:-}" ]; then
    MEM_MB=$(( SLURM_MEM_PER_CPU * NPROCS ))
fi
app_options=(--nprocs "${NPROCS}")
if [ -n "${MEM_MB}" ]; then
    MEM_GB=$(( MEM_MB * 9 / 10 / 1024 ))
    if [ "${MEM_GB}" -lt 1 ]; then MEM_GB=1; fi
    app_options+=(--mem "${MEM_GB}G")
fi

# A work directory per participant (intermediate results, reused by a rerun), and a scratch
# folder for the container's /tmp (caches), on the node's local disk when SLURM provides one.
WORK_DIR="${WORK_ROOT}/sub-${LABEL}"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/bidsrecon-${SLURM_ARRAY_JOB_ID:-job}_${SLURM_ARRAY_TASK_ID}.XXXXXX")
trap 'rm -rf "${SCRATCH}"' EXIT
mkdir -p "${OUTPUT_DIR}" "${WORK_DIR}"

# --containall: no host home, environment or /tmp inside the container (--workdir backs its
# /tmp instead); only the three bound folders (and the stimuli) are visible.
options=(--containall --cleanenv --workdir "${SCRATCH}"
         --bind "${BIDS_DIR}:/data:ro" --bind "${OUTPUT_DIR}:/out" --bind "${WORK_DIR}:/work")
if [ -n "${STIMULI_DIR}" ]; then
    options+=(--bind "${STIMULI_DIR}:/stimuli:ro")
    app_options+=(--stimuli-dir /stimuli)
fi
if [ "${USE_GPU}" = 1 ]; then
    options+=(--nv)
    app_options+=(--device cuda)
fi

echo "bidsrecon: sub-${LABEL} on $(hostname): ${app_options[*]}; work in ${WORK_DIR}"
"${APPTAINER}" run "${options[@]}" "${IMAGE}" \
    /data /out participant --participant-label "${LABEL}" -w /work \
    "${app_options[@]}" "$@"
