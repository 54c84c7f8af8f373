"""Scale-out diagnostics of compiled programs: XLA's involuntary rematerializations, the collectives a
compiled step runs, an analytic estimate of what FSDP and tensor parallelism need, and compiling for an
accelerator's code path on CPU devices (docs/scale-out.md)."""
