#!/usr/bin/env bash
# Multi-node pre-training on SLURM: one process per GPU, launched by srun directly.
#
#   sbatch scripts/launch_slurm.sh model=large parallel=fsdp data=hf trainer.max_steps=100000
#   RUN_DIR=runs/large-jreg0.1 sbatch --nodes=4 scripts/launch_slurm.sh model=large jreg.weight=0.1
#
# Chain jobs past the time limit: submit the same script several times with one job name and
# `--dependency=singleton`; each job continues the run with resume=auto (a finished run exits at once):
#   for i in 1 2 3; do sbatch --job-name=large-jreg --dependency=singleton scripts/launch_slurm.sh ...; done
#
# Why srun per GPU rather than torchrun per node: `--signal=TERM@300` then reaches every training process
# directly, 5 minutes before the time limit; each saves a checkpoint at the next step boundary and exits 0.
# (Under torchrun the agent gives its workers only ~30 s after a SIGTERM before killing them, which can be too
# short to write a large checkpoint.) The torchrun / accelerate equivalents, if you prefer them:
#   srun --ntasks-per-node=1 torchrun --nnodes=$SLURM_NNODES --nproc_per_node=8 --rdzv_backend=c10d \
#        --rdzv_id=$SLURM_JOB_ID --rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT -m llama_jreg train ...
#   accelerate launch --multi_gpu --num_machines $SLURM_NNODES --machine_rank $SLURM_NODEID \
#        --num_processes $((8*SLURM_NNODES)) --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
#        -m llama_jreg train ...
# run.dir must be on a file system every node sees (checkpoints are written by rank 0 plus a small
# rng/loader file per rank). Every rank composes the same config (Hydra Compose API), so all agree on it.
#
#SBATCH --job-name=llama-jreg
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out

set -euo pipefail

RUN_DIR=${RUN_DIR:-runs/${SLURM_JOB_NAME:-llama-jreg}}
VENV=${VENV:-.venv}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-8}}
export WANDB_MODE=${WANDB_MODE:-online}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

echo "llama-jreg: ${SLURM_NNODES} nodes x ${SLURM_NTASKS_PER_NODE} processes, head ${MASTER_ADDR}:${MASTER_PORT}, run.dir=${RUN_DIR}"

# torch.distributed's env:// rendezvous reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; accelerate picks
# them up. Each task gets its GPU through LOCAL_RANK. `exec` lets SIGTERM reach python itself.
srun --kill-on-bad-exit=1 bash -c '
  export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
  export LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE NODE_RANK=$SLURM_NODEID
  exec "'"$VENV"'/bin/python" -m llama_jreg train "run.dir='"$RUN_DIR"'" resume=auto "$@"
' llama-jreg "$@"
