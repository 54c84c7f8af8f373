"""Serving a trained run: `photon-jax serve` (docs/serving.md).

    pool.py      the slot pool on the device and its jitted programs (insert, decode, release)
    engine.py    the engine thread: wait queue, admission on the meta-context phase, decode steps
    protocol.py  the OpenAI completions request, checked field by field
    text.py      one sample's text: incremental detokenization, stop strings
    app.py       the HTTP API (FastAPI): /v1/completions, /v1/models, /health, /metrics
    metrics.py   Prometheus metrics
    launch.py    slots from the KV budget, engine + uvicorn, graceful shutdown
    lockstep.py  several processes: process 0's programs run on every process (photon_jax/lockstep.py)
"""
