"""The pod-scale plan: the paper-size train steps compiled deviceless for TPU slices and H100 nodes, one row
per (model, topology, mesh), written as JSON and as the markdown table of docs/scale-out.md (docs/aot.md).

    .venv-aot/bin/python -m photon_jax.scaleout.plan --out experiments/results/aot [--only ROW-SUBSTRING]

Rows already in the JSON are kept (a compile takes minutes on 2 cores; rerunning resumes); --redo
recompiles them. Each row keeps the command that reproduces it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from photon_jax.config import load_config
from photon_jax.errors import UserError
from photon_jax.scaleout.dry_run import dry_run
from photon_jax.scaleout.topology import use_cpu_backend

MODELS = ("photon-600m", "vanilla-600m")
BATCH = "train.batch_size=256"  # the paper's global batch of 2048-token sequences


@dataclasses.dataclass(frozen=True)
class Row:
    topology: str
    mesh: str
    overrides: tuple  # besides the model's preset and BATCH
    why: str

    def key(self, model: str) -> str:
        return f"{model} {self.topology} {self.mesh} {' '.join(self.overrides)}".strip()

    def command(self, model: str) -> str:
        return (f"photon-jax train --dry-run --preset {model} --topology {self.topology} --mesh {self.mesh} "
                f"{BATCH} {' '.join(self.overrides)}").strip()


ROWS = (
    Row("h100:8", "data=8", ("model.remat=full", "train.grad_accum=4"), "one node, pure data parallel"),
    Row("h100:8", "fsdp=8", ("model.remat=full", "train.grad_accum=4"), "one node, state sharded 8 ways"),
    Row("h100:64", "data=8,fsdp=8", ("model.remat=full",), "8 nodes: FSDP inside a node, data across"),
    Row("h100:64", "data=64", ("model.remat=full",), "8 nodes, pure data parallel"),
    Row("v5p:2x2x2", "data=2,fsdp=4", ("model.remat=full", "train.grad_accum=4"), "v5p-8 (95 GiB chips)"),
    Row("v5e:2x4", "fsdp=8", ("model.remat=full", "train.grad_accum=8"), "v5e-8: 16 GB chips need the state sharded"),
    Row("v5e:4x4", "data=2,fsdp=8", ("model.remat=full", "train.grad_accum=4"), "v5e-16, two hosts"),
    Row("v5e:8x8", "data=8,fsdp=8", ("model.remat=full",), "v5e-64 pod slice, 4 sequences per chip"),
)


def mesh_overrides(mesh: str) -> list[str]:
    """"data=2,fsdp=4" -> the three mesh.* overrides (an axis left out is 1, as with --mesh)."""
    sizes = dict(part.split("=") for part in mesh.split(","))
    return [f"mesh.{axis}={sizes.get(axis, 1)}" for axis in ("data", "fsdp", "tensor")]


def run_row(model: str, row: Row) -> dict:
    cfg = load_config(preset=model, overrides=[BATCH, *row.overrides, *mesh_overrides(row.mesh)])
    start = time.perf_counter()
    try:
        report = dry_run(cfg, topology=row.topology)
    except UserError as e:  # e.g. a mesh the batch does not split over
        return {"key": row.key(model), "command": row.command(model), "error": str(e)}
    return {"key": row.key(model), "command": row.command(model), "why": row.why, "model": model,
            "topology": row.topology, "mesh": row.mesh, "overrides": list(row.overrides),
            "wall_seconds": round(time.perf_counter() - start, 1), "report": slim(report)}


def slim(report: dict) -> dict:
    """The report without the per-kind analytic breakdown (kept: compiled per kind, totals, the ratio)."""
    out = dict(report)
    comm = report.get("communication")
    if comm:
        out["communication"] = {"compiled": comm["compiled"], "analytic_wire_bytes": comm["analytic"]["total"][
            "wire_bytes"], "compiled_over_analytic": comm["compiled_over_analytic"]}
    return out


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.1f}"


def table(rows: list[dict]) -> str:
    """The markdown table of the plan (one line per row; estimates labelled)."""
    lines = ["| model | topology | mesh | fits (peak / device GiB) | collectives GiB/step (vs fp32 floor) | remats "
             "| est. step s | est. MFU | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "pending" in r:
            lines.append(f"| {r['model']} | {r['topology']} | {r['mesh']} | not compiled yet | | | | | "
                         f"`{r['command']}` |")
            continue
        if "error" in r:
            lines.append(f"| {r['key']} | | | error: {r['error']} | | | | | `{r['command']}` |")
            continue
        rep, fit = r["report"], r["report"].get("fit", {})
        verdict = f"{'yes' if fit.get('fits') else 'NO'} ({_gib(fit.get('peak_bytes'))} / " \
                  f"{_gib(fit.get('capacity_bytes'))})"
        comm, roof = rep.get("communication"), rep.get("roofline")
        comm_text = "-" if not comm else \
            f"{comm['compiled']['total']['wire_bytes'] / 2**30:.2f} ({comm['compiled_over_analytic']:.2f}x)"
        step = "-" if not roof else f"{roof['step_seconds_overlapped']:.2f}-{roof['step_seconds']:.2f}"
        mfu = "-" if not roof else f"{roof['mfu'] * 100:.0f}-{roof['mfu_overlapped'] * 100:.0f}%"
        remats = "-" if not comm else str(len(rep["rematerializations"]))
        lines.append(f"| {r['model']} | {r['topology']} | {r['mesh']} | {verdict} | {comm_text} | {remats} | {step} "
                     f"| {mfu} | `{r['command']}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m photon_jax.scaleout.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="experiments/results/aot", help="folder of pod_plan.json / pod_plan.md")
    parser.add_argument("--only", default="", help="run the rows whose key contains this text")
    parser.add_argument("--redo", action="store_true", help="recompile rows already in the JSON")
    parser.add_argument("--doc", default=None, help="also put the table between <!-- pod_plan.md --> markers "
                                                    "of this page (docs/scale-out.md)")
    args = parser.parse_args(argv)
    use_cpu_backend()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pod_plan.json"
    done = {r["key"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    for model in MODELS:
        for row in ROWS:
            key = row.key(model)
            if args.only not in key or (key in done and not args.redo):
                continue
            print(f"[plan] {key}", file=sys.stderr, flush=True)
            done[key] = run_row(model, row)
            write(out, done)
    write(out, done)
    if args.doc:
        insert_table(Path(args.doc), (out / "pod_plan.md").read_text())
    return 0


MARKERS = ("<!-- pod_plan.md -->\n", "<!-- /pod_plan.md -->")


def insert_table(doc: Path, table_text: str) -> None:
    """Replace what stands between the page's two markers with the table."""
    text = doc.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    doc.write_text(text[:start] + table_text + text[end:])


def write(out: Path, done: dict) -> None:
    """pod_plan.json (the compiled rows) and pod_plan.md (every planned row; those not compiled say so)."""
    ordered = [done[r.key(m)] for m in MODELS for r in ROWS if r.key(m) in done]
    (out / "pod_plan.json").write_text(json.dumps(ordered, indent=1) + "\n")
    planned = [done.get(r.key(m)) or {"pending": True, "model": m, "topology": r.topology, "mesh": r.mesh,
                                      "command": r.command(m)} for m in MODELS for r in ROWS]
    (out / "pod_plan.md").write_text(table(planned) + "\n")


if __name__ == "__main__":
    sys.exit(main())
