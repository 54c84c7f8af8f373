#!/bin/bash
# Run photon-jax on every worker of a Cloud TPU pod slice (multi-host TPU VM).
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh setup
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh train --preset photon-1.2b \
#       --workdir /mnt/shared/runs/p12 data.data_dir=/mnt/shared/data/fineweb mesh.data=2 mesh.fsdp=16 mesh.tensor=1
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh eval --workdir /mnt/shared/runs/p12 \
#       --mesh data=1,fsdp=32,tensor=1
#
# `setup` copies this checkout to every worker and installs it with jax[tpu]; any other first argument
# is a photon-jax subcommand run on all workers at once (gcloud ... ssh --worker=all) with
# PHOTON_DISTRIBUTED=jax, so each worker calls jax.distributed.initialize() with no arguments and
# the TPU runtime supplies the coordinator, process count and process id.
#
# The work directory and the data must be on storage all workers share (e.g. a Filestore / NFS mount):
# orbax writes one checkpoint from all hosts, and process 0 writes config, metrics and summaries.
set -euo pipefail

TPU_NAME=${TPU_NAME:?set TPU_NAME to the TPU VM name}
ZONE=${ZONE:?set ZONE to the TPU zone}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
REMOTE_DIR=${REMOTE_DIR:-photon-jax}
JAX_VERSION=${JAX_VERSION:-0.10.2}

ssh_all() {
    gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --project "${PROJECT}" --worker=all \
        --command "$1"
}

if [[ $# -lt 1 ]]; then
    echo "usage: $0 setup | train ARGS... | eval ARGS..." >&2
    exit 2
fi

case "$1" in
    setup)
        here=$(cd "$(dirname "$0")/.." && pwd)
        tar -C "${here}" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/photon-jax.tgz .
        gcloud compute tpus tpu-vm scp /tmp/photon-jax.tgz "${TPU_NAME}:~/photon-jax.tgz" \
            --zone "${ZONE}" --project "${PROJECT}" --worker=all
        ssh_all "mkdir -p ${REMOTE_DIR} && tar -C ${REMOTE_DIR} -xzf ~/photon-jax.tgz && cd ${REMOTE_DIR} && \
            python3 -m venv .venv && .venv/bin/pip install -q 'jax[tpu]==${JAX_VERSION}' -e . && \
            .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
        ;;
    *)
        args=$(printf ' %q' "$@")
        # Every worker runs the same command; logs from all workers are interleaved (process 0 prints).
        ssh_all "cd ${REMOTE_DIR} && PHOTON_DISTRIBUTED=jax .venv/bin/photon-jax${args}"
        ;;
esac
