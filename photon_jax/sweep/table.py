"""One results table for a sweep: a flat row per finished run, ratios against the reference run,
written as CSV + JSON and printed as text."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from photon_jax.errors import UserError
from photon_jax.reports.tables import fmt, table

# (column, header, format) of the printed table; the CSV has every column of flat_row.
PRINTED = [
    ("run", "run", "s"), ("params", "params", ",d"), ("train_tokens", "tokens", ",d"),
    ("flops_x", "FLOPs x", ".3f"), ("val_ppl", "val ppl", ".2f"), ("val_bpb", "bits/byte", ".4f"),
    ("ppl_x", "ppl x", ".3f"), ("recgen_agreement", "recgen agree", ".3f"),
    ("tpm_pf", "TPM PF", ".4g"), ("tpm_pf_x", "PF x", ".3g"), ("tpm_de", "TPM DE", ".4g"), ("tpm_de_x", "DE x", ".3g"),
    ("tpm_de_recgen_x", "DE recgen x", ".3g"),
]


def flat_row(rec: dict) -> dict:
    v = rec["validation"]
    row = {"run": rec["run"], "family": rec["family"], "source": rec["source"], "params": rec["params"],
           "steps": rec["steps"], "train_tokens": rec["train_tokens"], "train_flops": rec["train_flops"],
           "train_flops_per_token": rec["train_flops_per_token"], "val_loss": v["token_loss"],
           "val_ppl": v["perplexity"], "val_bpb": v.get("bits_per_byte"), "val_targets": int(v["targets"]),
           "final_train_loss": rec["curve"]["train"][-1][1] if rec["curve"]["train"] else None,
           "train_seconds": rec.get("train_seconds"), "overrides": " ".join(rec["overrides"])}
    for point in rec.get("budget") or []:  # held-out perplexity along the run (measure.budget_steps)
        row[f"val_ppl_at_{point['step']}"] = point["perplexity"]
    for mode, scored in ((rec.get("windows") or {}).get("modes") or {}).items():  # every mode, the same windows
        row[f"window_ppl_{mode}"] = scored["perplexity"]
    agreement = (rec.get("agreement") or {}).get("hiergen_vs_recgen")
    if agreement:
        row["recgen_agreement"] = agreement["teacher_forced"]["greedy_agreement"]
        row["recgen_kl"] = agreement["teacher_forced"]["kl"]
        row["recgen_free_running"] = agreement.get("free_running", {}).get("token_agreement")
    for key, entry in (rec.get("tpm") or {}).items():
        regime, mode = key.split("/")
        default = mode in ("vanilla", "hiergen")  # the paper's Table 1 mode of each family
        for suffix in ([""] if default else []) + [f"_{mode}"]:
            row[f"tpm_{regime}{suffix}"] = entry["tpm"]
            row[f"kv_bytes_{regime}{suffix}"] = entry["kv_bytes_per_sample"]
            row[f"k_tokens_per_s_{regime}{suffix}"] = entry["throughput_k_tokens_per_s"]
    return row


def with_ratios(rows: list[dict], reference: str | None) -> list[dict]:
    """x columns: this run / the reference run (FLOPs, perplexity, every TPM column)."""
    ref = next((r for r in rows if r["run"] == reference), None)
    if ref is None:
        return rows
    out = []
    for row in rows:
        row = dict(row)
        row["flops_x"] = row["train_flops"] / ref["train_flops"]
        row["ppl_x"] = row["val_ppl"] / ref["val_ppl"]
        for key in [k for k in row if k.startswith("tpm_") and not k.endswith("_x")]:
            base = ref.get(f"tpm_{key.split('_')[1]}")  # the reference's default mode of that regime
            row[f"{key}_x"] = row[key] / base if base and row[key] is not None else None
        out.append(row)
    return out


def columns(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row if k not in seen]
    return seen


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write(out_dir: Path, rows: list[dict], meta: dict, summary: str | None = None) -> None:
    """results.csv / .json / .txt; a seeded grid (meta["summary"]) also results_summary.csv, and the text
    `summary` (mean ± std per group) above the per-run table."""
    write_atomic(out_dir / "results.csv", _csv(rows))
    write_atomic(out_dir / "results.json", json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    if meta.get("summary"):
        write_atomic(out_dir / "results_summary.csv", _csv(meta["summary"]))
    printed = text(rows, meta.get("reference"))
    write_atomic(out_dir / "results.txt", (f"{summary}\n\n" if summary else "") + printed + "\n")


def text(rows: list[dict], reference: str | None) -> str:
    present = [c for c in PRINTED if any(r.get(c[0]) is not None for r in rows)]
    body = [[fmt(r.get(key), spec) if spec != "s" else str(r.get(key)) for key, _, spec in present] for r in rows]
    note = f"x = vs {reference}" if reference else "no reference run: no ratios"
    return table([h for _, h, _ in present], body) + f"\n{note}; TPM = K generated tokens/s per GiB of KV cache"


def write_atomic(path: Path, content: str) -> None:
    """Write then rename: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(content)
        tmp.replace(path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
