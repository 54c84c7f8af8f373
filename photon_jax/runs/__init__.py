"""A run's work directory: its data, tokenizer and weights placed on a mesh (workdir.py), and its Orbax
checkpoints (checkpoint.py)."""
