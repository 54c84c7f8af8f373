"""Training: the optimizer and sharded state (state.py), the jitted step (step.py), the loop of steps and
its hooks (loop.py), metrics, profiling, the non-finite guard and task evaluation during training
(docs/training.md)."""
