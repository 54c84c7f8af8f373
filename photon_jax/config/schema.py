"""The settings themselves: one frozen dataclass per section, every default, and the checks across fields.

`Config.validate` checks cross-field constraints with one-line ConfigErrors. Every field carries a comment
saying what it means: docs/config.md is generated from them (photon_jax/config_reference.py). Building a
config from YAML and overrides is config/files.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from pallas_kernels.common import kernel_shape_problem
from photon_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LevelConfig:
    """One level of the PHOTON hierarchy (level 1 is closest to the tokens)."""

    chunk: int = 4  # C_l: level-(l-1) units per level-l unit
    fanout: int = 2  # R_l: conditioning rows the converter emits
    encoder_layers: int = 2  # Transformer blocks of this level's encoder
    decoder_layers: int = 2  # Transformer blocks of this level's chunk-local decoder
    # "concat": parameter-free concatenation (needs chunk * input width == width);
    # "norm_linear": RMSNorm over the concatenation + Linear(with bias);
    # "auto": concat when the widths fit, else norm_linear.
    chunker: str = "auto"


# Model fields that change how the step runs, never the parameters: a checkpoint loads under any of them.
RUNTIME_MODEL_FIELDS = ("dtype", "remat", "attention_impl", "scan_unroll")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "photon"  # "photon" (levels >= 1; one level = Block Transformer) or "vanilla"
    vocab_size: int = 32000  # token ids the model embeds and predicts (the tokenizer must fit in it)
    width: int = 512  # D, shared by every stack
    ffn_width: int = 1408  # F (SwiGLU hidden width)
    num_heads: int = 8  # query heads of every attention layer
    num_kv_heads: int = 0  # 0 = num_heads (multi-head); fewer = grouped-query attention
    head_dim: int = 0  # 0 = width // num_heads
    rope_theta: float = 10000.0  # base of the rotary position frequencies
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = False  # the LM head reuses the (decoder) token embedding table
    num_layers: int = 8  # blocks of the vanilla stack (vanilla only)
    levels: tuple[LevelConfig, ...] = (LevelConfig(), LevelConfig())  # PHOTON's hierarchy, level 1 first
    encoder_embed_width: int = 0  # 0 = width // levels[0].chunk (the paper's narrow embedder)
    alignment: str = "A"  # docs/method.md 3.3: "A" top-shift, "B" shift-every-level, "C" literal recursion
    block_local_lower: bool = False  # lower encoders attend only inside their meta-context (5.5)
    # Conditioning of the first unit of a shifted stream. "fixed": a constant all-ones vector (the
    # first chunk's rows are still learned, through the converter's weight and bias; this keeps the
    # paper's exact parameter counts); "learned": a D-vector parameter. Never zeros: an all-zero
    # window keeps the decoder's residual stream at exactly 0, where RMSNorm's gradient explodes.
    start_latent: str = "fixed"
    rec_alpha: float = 0.0  # weight of L_rec (paper eq. 1)
    rec_stop_gradient: bool = True  # stop gradients through the encoder target of L_rec
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"  # dtype parameters and optimizer state are kept in
    scan_layers: bool = True  # stacks as one scanned layer (fast compiles) instead of unrolled modules
    remat: str = "none"  # "none" | "full" | "dots" (save matmul outputs)
    # Layers per loop iteration of a scanned stack (>= num_layers: no loop). Parameters keep their stacked
    # layout; unrolling trades compile time for step time (CPU vanilla-tiny: see README "Training speed").
    scan_unroll: int = 1
    attention_impl: str = "auto"  # "auto" | "xla" | "pallas"

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_width(self) -> int:
        return self.head_dim or self.width // self.num_heads

    @property
    def embed_width(self) -> int:
        return self.encoder_embed_width or self.width // self.levels[0].chunk

    @property
    def meta_context(self) -> int:
        """B = C_1 * ... * C_L: tokens per top-level unit (1 for vanilla)."""
        if self.family == "vanilla":
            return 1
        return math.prod(level.chunk for level in self.levels)

    def chunker_kind(self, level_index: int) -> str:
        level = self.levels[level_index]
        in_width = self.embed_width if level_index == 0 else self.width
        if level.chunker != "auto":
            return level.chunker
        return "concat" if level.chunk * in_width == self.width else "norm_linear"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # "shakespeare" (bundled), or comma-separated files / dirs / globs of .txt, .jsonl[.gz|.zst], .parquet,
    # or a Hugging Face `datasets` dir (docs/data.md)
    corpus: str = "shakespeare"
    data_dir: str = ""  # prepared shards; "" = <workdir>/data
    tokenizer: str = ""  # a sentencepiece .model or a tokenizer.json to use instead of training one
    text_field: str = "text"  # the text of a JSONL object / parquet or datasets row; other fields are ignored
    tokenizer_sample_mb: int = 100  # text a trained tokenizer sees at most (spread over the work units)
    prepare_workers: int = 0  # processes tokenizing work units in parallel; 0 = one per CPU core
    prepare_unit_mb: float = 64.0  # input per work unit: the grain of parallel and resumed preparation
    vocab_size: int = 0  # tokenizer size when trained in-process; 0 = model.vocab_size
    seq_len: int = 128  # tokens per training window (a multiple of the chunk product)
    validation_fraction: float = 0.05  # share of documents held out for validation
    seed: int = 0  # the train/validation split, and the training window order unless order_seed is set
    order_seed: int = -1  # the training window order alone (sweeps' seeds); -1 = seed
    worker_count: int = 0  # grain worker processes feeding training batches; 0 = in the main process
    # "PATH:WEIGHT" per prepared data dir (the last ':' separates): train on their weighted mixture
    # instead of data_dir / corpus (docs/data.md, Mixtures)
    mixture: tuple[str, ...] = ()


def window_order_seed(data: "DataConfig") -> int:
    """The seed of the training window order: data.order_seed, else data.seed."""
    return data.seed if data.order_seed < 0 else data.order_seed


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 600  # optimizer steps of the run (the schedule ends here)
    batch_size: int = 16  # global, in sequences
    grad_accum: int = 1  # micro-batches per step (batch_size must divide by it)
    learning_rate: float = 3e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # the cosine decay ends at learning_rate * min_lr_ratio
    warmup_steps: int = 60  # linear warm-up steps
    b1: float = 0.9  # AdamW beta1
    b2: float = 0.95  # AdamW beta2
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global gradient-norm clipping
    seed: int = 0  # parameter initialisation (and sampling in task evaluations)
    log_every: int = 20  # steps between metric lines (metrics.jsonl, TensorBoard)
    eval_every: int = 200  # steps between validation evaluations
    eval_batches: int = 8  # validation batches per evaluation
    checkpoint_every: int = 200  # steps between checkpoints
    keep_checkpoints: int = 3  # checkpoints kept on disk
    nonfinite: str = "skip"  # "skip" the update or "halt" on a non-finite loss / gradient
    max_consecutive_skips: int = 100  # skip mode halts (exit 2) after this many skipped steps in a row; 0 = never
    init_from: str = ""  # a run directory whose latest params start this run (fresh optimizer, step 0)
    profile_steps: str = ""  # "START:COUNT": jax.profiler trace of those steps into <workdir>/tensorboard
    wandb_project: str = ""  # log to Weights & Biases too (the [wandb] extra); "" = off
    wandb_mode: str = ""  # "online" | "offline" | "disabled"; "" = wandb's default (WANDB_MODE)
    # lm-evaluation-harness tasks during training (the [eval] extra; docs/evaluation.md)
    eval_tasks: tuple[str, ...] = ()
    eval_tasks_every: int = 0  # steps between task evaluations; 0 = at the last step only
    eval_tasks_limit: float = 0.0  # documents per task (a fraction when < 1); 0 = every document
    eval_tasks_include: tuple[str, ...] = ()  # directories of local task YAMLs


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1 = all remaining devices
    fsdp: int = 1  # devices that split parameters and optimizer state (and the batch)
    tensor: int = 1  # devices that split heads, MLP and vocabulary (Megatron tensor parallelism)
    # logical axis name -> mesh axes (None = replicated). Model code names only logical axes.
    rules: tuple[tuple[str, Any], ...] = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("layers", None),
        ("length", None),
        ("cache_seq", None),
        ("level", None),
    )


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "custom"  # the run's name (the preset's, by default; names runs/<name>)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()

    def validate(self) -> "Config":
        validate_model(self.model)
        d, t = self.data, self.train
        _require(d.seq_len > 1, f"data.seq_len must be > 1, got {d.seq_len}")
        b = self.model.meta_context
        _require(
            d.seq_len % b == 0,
            f"data.seq_len={d.seq_len} is not a multiple of the chunk product {b} "
            f"(model.levels chunks {[lv.chunk for lv in self.model.levels]})",
        )
        _require(0.0 <= d.validation_fraction < 1.0, "data.validation_fraction must be in [0, 1)")
        _require(d.vocab_size >= 0, f"data.vocab_size must be >= 0, got {d.vocab_size}")
        if d.mixture:
            _require(not d.data_dir, "data.mixture and data.data_dir exclude each other (the mixture names its dirs)")
            parse_mixture(d.mixture)
        _require(bool(d.text_field), "data.text_field must not be empty")
        _require(d.order_seed >= -1, f"data.order_seed must be >= 0 (or -1 = data.seed), got {d.order_seed}")
        _require(d.tokenizer_sample_mb > 0, f"data.tokenizer_sample_mb must be > 0, got {d.tokenizer_sample_mb}")
        _require(d.prepare_workers >= 0, f"data.prepare_workers must be >= 0, got {d.prepare_workers}")
        _require(d.prepare_unit_mb > 0, f"data.prepare_unit_mb must be > 0, got {d.prepare_unit_mb}")
        for key in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "eval_batches",
                    "checkpoint_every", "keep_checkpoints"):
            _require(getattr(t, key) > 0, f"train.{key} must be > 0, got {getattr(t, key)}")
        _require(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
        _require(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}")
        _require(t.batch_size % t.grad_accum == 0,
                 f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
        _require(t.nonfinite in ("skip", "halt"), f"train.nonfinite must be skip or halt, got {t.nonfinite!r}")
        _require(t.max_consecutive_skips >= 0,
                 f"train.max_consecutive_skips must be >= 0 (0 = never halt), got {t.max_consecutive_skips}")
        _require(not t.profile_steps or bool(re.fullmatch(r"0*[1-9]\d*:0*[1-9]\d*", t.profile_steps)),
                 f"train.profile_steps={t.profile_steps!r}: expected START:COUNT with START >= 1 and COUNT >= 1")
        _require(t.wandb_mode in ("", "online", "offline", "disabled"),
                 f"train.wandb_mode must be online, offline or disabled, got {t.wandb_mode!r}")
        _require(t.eval_tasks_every >= 0, f"train.eval_tasks_every must be >= 0, got {t.eval_tasks_every}")
        _require(t.eval_tasks_limit >= 0, f"train.eval_tasks_limit must be >= 0, got {t.eval_tasks_limit}")
        for axis in ("data", "fsdp", "tensor"):
            size = getattr(self.mesh, axis)
            _require(size == -1 or size >= 1, f"mesh.{axis} must be -1 or >= 1, got {size}")
        return self

    def to_dict(self) -> dict:
        return _to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_mixture(entries: tuple[str, ...]) -> list[tuple[Path, Fraction]]:
    """data.mixture entries "PATH:WEIGHT" -> (resolved dir, exact weight > 0), one ConfigError per bad entry.
    Weights are kept as exact fractions so that the interleave proportions are exact (mixture.py)."""
    out: list[tuple[Path, Fraction]] = []
    for entry in entries:
        path, sep, weight_text = str(entry).rpartition(":")
        _require(bool(sep and path), f"data.mixture entry {entry!r} is not PATH:WEIGHT")
        try:
            weight = Fraction(weight_text.strip())
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"data.mixture entry {entry!r}: weight {weight_text!r} is not a number") from None
        _require(weight > 0, f"data.mixture entry {entry!r}: weight must be > 0, got {weight_text}")
        directory = Path(path).expanduser().resolve()
        for seen, _ in out:
            _require(seen != directory, f"data.mixture names {directory} twice")
        out.append((directory, weight))
    return out


def validate_model(m: ModelConfig) -> None:
    _require(m.family in ("photon", "vanilla"), f"model.family must be photon or vanilla, got {m.family!r}")
    for key in ("vocab_size", "width", "ffn_width", "num_heads"):
        _require(getattr(m, key) > 0, f"model.{key} must be > 0, got {getattr(m, key)}")
    _require(m.num_kv_heads >= 0 and m.head_dim >= 0, "model.num_kv_heads and model.head_dim must be >= 0")
    if not m.head_dim:
        _require(m.width % m.num_heads == 0,
                 f"model.num_heads={m.num_heads} does not divide model.width={m.width}")
    _require(m.num_heads % m.kv_heads == 0,
             f"model.num_kv_heads={m.kv_heads} does not divide model.num_heads={m.num_heads}")
    _require(m.head_width % 2 == 0, f"head dimension {m.head_width} must be even for rotary embeddings")
    _require(m.rope_theta > 0 and m.norm_eps > 0, "model.rope_theta and model.norm_eps must be > 0")
    _require(m.dtype in ("bfloat16", "float32", "float16"), f"model.dtype {m.dtype!r} is not a float dtype")
    _require(m.param_dtype in ("bfloat16", "float32"), f"model.param_dtype {m.param_dtype!r} is not supported")
    _require(m.remat in ("none", "full", "dots"), f"model.remat must be none, full or dots, got {m.remat!r}")
    _require(m.scan_unroll >= 1, f"model.scan_unroll must be >= 1, got {m.scan_unroll}")
    _require(m.attention_impl in ("auto", "xla", "pallas"),
             f"model.attention_impl must be auto, xla or pallas, got {m.attention_impl!r}")
    if m.attention_impl == "pallas":
        problem = kernel_shape_problem(m.head_width, m.dtype)
        _require(problem is None, f"model.attention_impl=pallas: the decode kernels cannot take this model: {problem}")
    if m.family == "vanilla":
        _require(m.num_layers > 0, f"model.num_layers must be > 0, got {m.num_layers}")
        return
    _require(len(m.levels) >= 1, "model.levels must have at least one level (L = 0 is not a hierarchy)")
    _require(m.alignment in ("A", "B", "C"), f"model.alignment must be A, B or C, got {m.alignment!r}")
    _require(m.start_latent in ("fixed", "learned"),
             f"model.start_latent must be fixed or learned, got {m.start_latent!r}")
    _require(m.rec_alpha >= 0, f"model.rec_alpha must be >= 0, got {m.rec_alpha}")
    _require(m.encoder_embed_width >= 0, f"model.encoder_embed_width must be >= 0, got {m.encoder_embed_width}")
    for i, level in enumerate(m.levels):  # chunk sizes first: the widths below divide by them
        _require(level.chunk >= 2, f"model.levels.{i}.chunk must be >= 2, got {level.chunk}")
    _require(m.embed_width > 0, f"encoder embedding width is 0 (width {m.width} < chunk {m.levels[0].chunk})")
    for i, level in enumerate(m.levels):
        name = f"model.levels.{i}"
        _require(level.fanout >= 1, f"{name}.fanout must be >= 1, got {level.fanout}")
        _require(level.encoder_layers >= 1 and level.decoder_layers >= 1,
                 f"{name}: encoder_layers and decoder_layers must be >= 1")
        _require(level.chunker in ("auto", "concat", "norm_linear"),
                 f"{name}.chunker must be auto, concat or norm_linear, got {level.chunker!r}")
        in_width = m.embed_width if i == 0 else m.width
        if m.chunker_kind(i) == "concat":
            _require(level.chunk * in_width == m.width,
                     f"{name}.chunker=concat needs chunk*input width == width ({level.chunk}*{in_width} != {m.width})")


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(x) for x in obj]
    return obj
