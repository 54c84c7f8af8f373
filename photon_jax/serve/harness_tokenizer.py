"""The tokenizer directory lm-evaluation-harness's `local-completions` model reads to score through the server.

`photon-jax eval` puts the document boundary token (EOS) in front of every scored sequence, as training
saw every document (eval/scoring.py); the harness's API models send context + continuation as their
tokenizer encodes them, adding only what it adds with special tokens (`add_bos_token=True`). So this
directory holds the run's tokenizer.json (a SentencePiece run's converted as `photon-jax export` does)
with a post-processor that puts EOS first when special tokens are asked for, and a tokenizer_config.json
naming EOS as the BOS token too (the harness's prefix token for empty contexts). With
`add_bos_token=True` and `max_length` = the run's data.seq_len + 1, the server receives the token ids
`photon-jax eval --tasks` scores, truncated alike (docs/serving.md).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from photon_jax.errors import UserError
from photon_jax.tokenizers.hf_tokenizer import HFTokenizer
from photon_jax.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from photon_jax.tokenizers.tokenizer_json import CONFIG_NAME, FILE_NAME, converter_available, write_tokenizer_json


def write_harness_tokenizer(tok, directory, max_length: int) -> Path:
    """tokenizer.json + tokenizer_config.json for the harness into `directory` (created or overwritten)."""
    from tokenizers import Tokenizer, processors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(tok, SentencePieceTokenizer):
            if not converter_available():
                raise UserError("the harness tokenizer of a SentencePiece run needs transformers and protobuf")
            write_tokenizer_json(tok, Path(tmp), max_length)
            config = json.loads((Path(tmp) / CONFIG_NAME).read_text())
        elif isinstance(tok, HFTokenizer):
            shutil.copyfile(tok.path, Path(tmp) / FILE_NAME)
            config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                      "model_max_length": max_length}
        else:
            raise UserError(f"no harness tokenizer for a {type(tok).__name__} (the server has no tokenizer)")
        converted = Tokenizer.from_file(str(Path(tmp) / FILE_NAME))
    eos = converted.id_to_token(tok.eos_id)
    converted.post_processor = processors.TemplateProcessing(single=f"{eos} $A", pair=f"{eos} $A $B",
                                                             special_tokens=[(eos, tok.eos_id)])
    converted.save(str(directory / FILE_NAME))
    config.update(eos_token=eos, bos_token=eos, pad_token=converted.id_to_token(tok.pad_id), add_bos_token=True,
                  add_eos_token=False)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory
