"""Prometheus metrics of one server: queue, slots, KV bytes in use, tokens, TTFT and inter-token latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue = Gauge("photon_serve_queue_length", "requests waiting for a slot", registry=r)
        self.busy = Gauge("photon_serve_busy_slots", "slots holding a sequence", registry=r)
        self.slots = Gauge("photon_serve_slots", "slots in the pool", registry=r)
        self.kv_bytes = Gauge("photon_serve_kv_bytes_in_use", "bytes of the busy slots (caches + row state)",
                              registry=r)
        self.peak = Gauge("photon_serve_peak_busy_slots", "most slots busy at once since start", registry=r)
        self.tokens = Counter("photon_serve_generated_tokens", "tokens generated", registry=r)
        self.requests = Counter("photon_serve_requests", "completion requests by outcome", ["status"], registry=r)
        self.ttft = Histogram("photon_serve_time_to_first_token_seconds", "arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.engine_time = Gauge("photon_serve_engine_seconds", "engine thread time since start: all rounds, and "
                                 "of them waiting for the insert (prefill) and decode programs", ["part"], registry=r)
        self.itl = Histogram("photon_serve_inter_token_latency_seconds",
                             "time between a sample's token deliveries (a multi-step decode delivers several)",
                             buckets=LATENCY_BUCKETS, registry=r)

    def observer(self):
        """What the scheduler reports to (scheduler.Scheduler.observer)."""
        return _Observer(self)

    def bind(self, engine):
        """Gauges read the engine when scraped."""
        self.queue.set_function(lambda: engine.queued)
        self.busy.set_function(lambda: engine.busy)
        self.slots.set(engine.spec.slots)
        self.kv_bytes.set_function(lambda: engine.busy * engine.slot_bytes)
        self.peak.set_function(lambda: engine.peak_busy)
        for part in engine.time_s:
            self.engine_time.labels(part).set_function(lambda part=part: engine.time_s[part])


class _Observer:
    def __init__(self, metrics: Metrics):
        self.m = metrics

    def first_token(self, seconds: float):
        self.m.ttft.observe(seconds)

    def gap(self, seconds: float):
        self.m.itl.observe(seconds)

    def tokens(self, k: int):
        self.m.tokens.inc(k)
