"""Multi-host launchers (local multi-process CPU, SLURM GPU cluster, TPU pod); see README.md."""
