"""Benchmarks after the paper's efficiency protocol (docs/method.md section 9).

* tpm.py          `bench tpm`: throughput per memory in the PF / DE regimes, at the largest
                  batch whose KV caches fit a memory budget.
* context.py      `bench context`: KV memory, decode speed and time to first token vs context.
* train_bench.py  `bench train`: tokens/s and MFU of the real jitted train step.
Shared pieces: models.py (configs, random weights, modes), memory.py (per-sample KV bytes,
the batch search, KV reads per token, device memory), timing.py, report.py (result keys + tables),
plot.py (PNG); the JSON envelope, table and figure helpers are photon_jax/reports/ (shared with
sweep and eval). Benchmarks report speed; tests check behaviour, never timings.
"""
