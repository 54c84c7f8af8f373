"""Online loading of a prepared data dir: packing into windows (packing), the grain train and eval
pipelines (pipeline), weighted mixtures of data dirs (mixture). Reads data dirs only through the
manifest (photon_jax.data.manifest); imports no preparation module."""
