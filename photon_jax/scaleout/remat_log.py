"""Catch XLA's "[SPMD] Involuntary full rematerialization" warnings while a program compiles.

The SPMD partitioner writes them (C++ logging, straight to file descriptor 2) when it cannot reshard a
tensor from one layout to another and instead replicates it on every device and partitions it again: an
all-gather of the whole tensor that the program did not ask for. Nothing in the compiled program's API
reports them, so the compile runs with fd 2 pointed at a temporary file and the lines are read back.
A program loaded from the persistent compilation cache is not partitioned again and logs nothing: the
callers that audit compile with the cache off (`fresh_compile`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile

import jax
from jax.experimental.compilation_cache import compilation_cache
from jax.extend.backend import clear_in_memory_compilation_cache

MARKER = "Involuntary full rematerialization"
_OP = re.compile(r"HLO operation %(\S+) = (\S+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FROM_TO = re.compile(r"cannot go from sharding (\{.*?\}) to (\{.*?\}) efficiently")


@dataclasses.dataclass(frozen=True)
class Rematerialization:
    """One warning: the HLO value, its shape, the sharding it had and the one it needed, and the JAX
    op that produced it (from the HLO metadata; empty for the partitioner's own parameters)."""

    hlo: str
    shape: str
    from_sharding: str
    to_sharding: str
    op_name: str

    @classmethod
    def parse(cls, line: str) -> "Rematerialization":
        op, name, moved = _OP.search(line), _OP_NAME.search(line), _FROM_TO.search(line)
        return cls(op.group(1) if op else "", op.group(2) if op else "", moved.group(1) if moved else "",
                   moved.group(2) if moved else "", name.group(1) if name else "")

    def describe(self) -> str:
        where = self.op_name or self.hlo
        return f"{self.shape} {self.from_sharding} -> {self.to_sharding} at {where}"


@contextlib.contextmanager
def captured_fd2():
    """Yields a list that holds everything written to fd 2 inside the block once the block exits."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.extend(tmp.read().decode("utf-8", "replace").splitlines())


def rematerializations(lines) -> list[Rematerialization]:
    return [Rematerialization.parse(line) for line in lines if MARKER in line]


@contextlib.contextmanager
def fresh_compile():
    """Compile afresh inside the block, so that the partitioner runs: nothing comes from the persistent
    compilation cache, nor from JAX's in-memory cache of executables (which answers a Lowered compiled
    before with the same options without compiling it). The executable a Lowered keeps of its own
    option-less `compile()` is skipped by compile_audited (it always passes options)."""
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    # JAX decides once per process, at its first compile, whether the persistent cache is used
    # (compilation_cache.is_cache_used): after that the flag alone changes nothing. reset_cache makes it
    # decide again, here with the cache off, and again after the block with the flag restored.
    compilation_cache.reset_cache()
    clear_in_memory_compilation_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        compilation_cache.reset_cache()


def compile_audited(lowered, compiler_options=None):
    """(compiled executable, [Rematerialization]) for a jax `Lowered`; other stderr lines pass through."""
    with fresh_compile(), captured_fd2() as lines:
        # options, even empty, make the Lowered compile again instead of returning its own earlier executable
        compiled = lowered.compile(compiler_options=dict(compiler_options or {}))
    others = [line for line in lines if MARKER not in line]
    if others:
        print("\n".join(others), file=sys.stderr)
    return compiled, rematerializations(lines)
