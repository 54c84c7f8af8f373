"""The collectives a compiled (SPMD-partitioned) program runs on each device, read from its HLO text.

Counts and bytes are per device and per execution of the program, with every op inside a while loop
(the scanned layer stack) counted once per iteration (XLA records the trip count it proved). Shapes in
the partitioned module are per-device shards. "wire bytes" is what one device sends under the usual
ring / bidirectional algorithms for a group of n devices (the figure an interconnect's bandwidth
divides):
    all-gather          result * (n - 1) / n
    reduce-scatter      result * (n - 1)          (the input is n results)
    all-reduce          2 * size * (n - 1) / n
    all-to-all          size * (n - 1) / n
    collective-permute  size
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s+\(.*\)\s*->.*\{\s*$")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<type>.*?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(pred|s4|s8|s16|s32|s64|u4|u8|u16|u32|u64|f8e4m3fn|f8e5m2|bf16|f16|f32|f64|c64|c128)"
                    r"\[([0-9,]*)\]")
_WHILE = re.compile(r"\bwhile\(.*\bbody=%([^\s,]+)")
_CONDITION = re.compile(r"\bcondition=%([^\s,]+)")
_INT_CONSTANT = re.compile(r"=\s*s(?:32|64)\[\]\S*\s+constant\((\d+)\)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLS = re.compile(r"\b(?:to_apply|calls|true_computation|false_computation|branch_computations)=\{?%([^\s,}]+)")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([0-9,]+)\]<=")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\].*?\}?\s*\{([^}]*)\}")
_PAIRS = re.compile(r"source_target_pairs=\{")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "f8e4m3fn": 8, "f8e5m2": 8, "bf16": 16, "f16": 16, "c64": 64, "c128": 128}


def _bytes(dtype: str, dims: str) -> int:
    bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype))
    return math.prod(int(d) for d in dims.split(",") if d) * bits // 8


def _arrays(type_text: str) -> list[int]:
    return [_bytes(dt, dims) for dt, dims in _ARRAY.findall(type_text)]


def group_size(line: str, num_devices: int) -> int:
    """Devices in each replica group of a collective (all of them when the groups are left empty)."""
    m = _GROUPS_LIST.search(line)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = _GROUPS_IOTA.search(line)
    if m:
        return int(m.group(1).split(",")[-1])
    m = _GROUPS_MESH.search(line)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)) if a in sizes) or num_devices
    if _PAIRS.search(line):
        return 2
    return num_devices


def result_bytes(kind: str, type_text: str, is_start: bool) -> int:
    sizes = _arrays(type_text)
    if not sizes:
        return 0
    if is_start and kind in ("all-gather", "collective-permute") and len(sizes) > 1:
        return sizes[1]  # (operand, result, ...) tuples of the async form
    return sum(sizes)


def wire_bytes(kind: str, size: int, n: int) -> float:
    if n <= 1:
        return 0.0
    return {"all-gather": size * (n - 1) / n, "reduce-scatter": size * (n - 1), "all-reduce": 2 * size * (n - 1) / n,
            "all-to-all": size * (n - 1) / n, "collective-permute": float(size)}[kind]


def _computations(hlo_text: str) -> dict[str, list[str]]:
    comps, current = {}, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                comps["__entry__"] = comps[current]
        elif current is not None:
            comps[current].append(line)
    return comps


def _condition_bound(comps: dict[str, list[str]], while_line: str) -> int:
    """A while loop's trip count read off its condition when the backend records none (the TPU compiler):
    a scan's `i < N` over a counter from 0, i.e. one LT compare against the condition's only integer
    constant. 1 when the condition has another form."""
    cond = _CONDITION.search(while_line)
    lines = comps.get(cond.group(1), []) if cond else []
    constants = [int(m.group(1)) for ln in lines if (m := _INT_CONSTANT.search(ln))]
    compares = [ln for ln in lines if " compare(" in ln]
    if len(constants) == 1 and len(compares) == 1 and "direction=LT" in compares[0]:
        return max(constants[0], 1)
    return 1


def _multipliers(comps: dict[str, list[str]]) -> dict[str, int]:
    """How many times each computation runs per execution of the entry (while bodies x trip count)."""
    entry = next(name for name, lines in comps.items() if name != "__entry__" and lines is comps.get("__entry__"))
    times: dict[str, int] = defaultdict(int)

    def visit(name: str, n: int, depth: int = 0):
        if name not in comps or depth > 64:
            return
        times[name] += n
        for line in comps[name]:
            body = _WHILE.search(line)
            if body:
                trips = _TRIPS.search(line)
                count = int(trips.group(1)) if trips else _condition_bound(comps, line)
                visit(body.group(1), n * count, depth + 1)
            for callee in _CALLS.findall(line):
                visit(callee, n, depth + 1)

    visit(entry, 1)
    return times


def collectives(hlo_text: str, num_devices: int) -> dict:
    """{kind: {"count", "bytes" (result bytes), "wire_bytes"}} per device per execution, plus "total"."""
    comps = _computations(hlo_text)
    times = _multipliers(comps) if "__entry__" in comps else {}
    out = {kind: {"count": 0, "bytes": 0, "wire_bytes": 0.0} for kind in KINDS}
    for name, lines in comps.items():
        n_runs = times.get(name, 0)
        if name == "__entry__" or not n_runs:
            continue
        for line in lines:
            m = _OP.match(line)
            if not m:
                continue
            kind = m.group("kind")
            size = result_bytes(kind, m.group("type"), bool(m.group("start")))
            out[kind]["count"] += n_runs
            out[kind]["bytes"] += n_runs * size
            out[kind]["wire_bytes"] += n_runs * wire_bytes(kind, size, group_size(line, num_devices))
    out["total"] = {key: sum(out[k][key] for k in KINDS) for key in ("count", "bytes", "wire_bytes")}
    for entry in out.values():
        entry["wire_bytes"] = int(np.round(entry["wire_bytes"]))
    return out
