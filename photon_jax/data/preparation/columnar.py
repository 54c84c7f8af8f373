"""Opening columnar inputs (parquet files, Hugging Face `datasets` dirs) with their optional libraries.

Both need the [data] extra (pyarrow, datasets); without it, or for a file that is not what its name
says, the error is one line naming the file.
"""

from __future__ import annotations

from photon_jax.data.preparation.corpus import InputFile
from photon_jax.errors import CorpusError, UserError

EXTRA = "pip install 'photon-jax[data]'"


def open_parquet(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow ({EXTRA})") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise CorpusError(f"{path} is not a readable parquet file ({str(e).splitlines()[0][:200]})") from None


def open_dataset(f: InputFile):
    try:
        import datasets
    except ImportError:
        raise UserError(f"reading the datasets dir {f.path} needs the datasets package ({EXTRA})") from None
    try:
        loaded = datasets.load_from_disk(f.path)
    except Exception as e:
        raise UserError(f"{f.path} is not a readable datasets dir ({str(e).splitlines()[0][:200]})") from None
    if f.split:
        if f.split not in loaded:
            raise UserError(f"datasets dir {f.path} has no split {f.split!r}")
        loaded = loaded[f.split]
    return loaded
