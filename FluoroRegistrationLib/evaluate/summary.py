"""Summaries of an experiment's runs (docs/CONVENTIONS.md): success rates, capture range, accuracy over
successful runs, per-parameter capture ranges, and the study's table layout."""

from __future__ import annotations

import math

import numpy as np

SUCCESS_FOR_CAPTURE = 0.95
# the study FluoroRegistration builds on (masked GCC, simulated annealing + Adam): what to beat
STUDY = {("femur", "mask"): "0.15 mm / 0.81 deg, 94.6 %, 12 mm / 8 deg",
         ("femur", "no mask"): "1.43 mm / 2.57 deg, 76.7 %",
         ("tibia", "mask"): "0.92 mm / 2.10 deg, 83.1 %, 10 mm / 5 deg",
         ("tibia", "no mask"): "2.04 mm / 5.07 deg, 65.8 %"}


def capture_range(edges: list[float], success: list[float], threshold: float = SUCCESS_FOR_CAPTURE) -> float:
    """The largest initial-mTRE interval [0, edges[k]) whose bins all succeed at >= threshold
    (van de Kraats et al. 2005). ``success[i]``: rate in bin [edges[i], edges[i+1]) (NaN: no runs)."""
    reach = 0.0
    for hi, rate in zip(edges[1:], success):
        if math.isnan(rate) or rate < threshold:
            break
        reach = hi
    return reach


def _axis_capture(rows: list[dict]) -> dict[str, float]:
    """Per parameter: the largest offset such that every tested offset up to it succeeds >= 95 %."""
    out = {}
    for axis in sorted({r["axis"] for r in rows}):
        sel = [r for r in rows if r["axis"] == axis]
        reach = 0.0
        for v in sorted({r["value"] for r in sel}):
            rate = np.mean([r["success_2mm"] for r in sel if r["value"] == v])
            if rate < SUCCESS_FOR_CAPTURE:
                break
            reach = v
        out[axis] = reach
    return out


def summarise(rows: list[dict], edges: list[float]) -> list[dict]:
    """One dict per (bone, condition), in the order they first appear in ``rows``."""
    out = []
    keys = list(dict.fromkeys((r["bone"], r["condition"]) for r in rows))
    for bone, cond in keys:
        sel = [r for r in rows if r["bone"] == bone and r["condition"] == cond]
        binned = [r for r in sel if r["kind"] == "bin"]
        per_bin = []
        for lo, hi in zip(edges, edges[1:]):
            b = [r["success_2mm"] for r in binned if lo <= r["bin_lo"] < hi]
            per_bin.append(float(np.mean(b)) if b else math.nan)
        ok = [r for r in binned if r["success_2mm"]]
        med = lambda k, rs: float(np.median([r[k] for r in rs])) if rs else math.nan  # noqa: E731
        out.append({
            "bone": bone, "condition": cond, "runs": len(sel), "binned_runs": len(binned),
            "success_2mm": float(np.mean([r["success_2mm"] for r in binned])) if binned else math.nan,
            "success_1mm": float(np.mean([r["success_1mm"] for r in binned])) if binned else math.nan,
            "success_per_bin": per_bin, "capture_range_mm": capture_range(edges, per_bin),
            "in_plane_mm": med("in_plane_mm", ok), "out_of_plane_mm": med("out_of_plane_mm", ok),
            "translation_mm": med("translation_mm", ok), "rotation_deg": med("rotation_deg", ok),
            "mtre_mm": med("mtre_mm", ok), "seconds": med("seconds", sel),
            "axis_capture": _axis_capture([r for r in sel if r["kind"] == "axis"]),
            **status_counts(sel),
        })
    return out


def status_counts(rows: list[dict]) -> dict:
    """How the result status (ok | check | failed) matched the truth: failures (mTRE >= 2 mm) flagged
    and successes flagged (false alarms), each as [flagged, of]; rows without a status (runs files
    from before it) are left out."""
    judged = [r for r in rows if r.get("status") in ("ok", "check", "failed")]
    failures = [r for r in judged if not r["success_2mm"]]
    successes = [r for r in judged if r["success_2mm"]]
    flagged = lambda rs: sum(r["status"] != "ok" for r in rs)  # noqa: E731
    return {"failures_flagged": [flagged(failures), len(failures)],
            "successes_flagged": [flagged(successes), len(successes)]}


def status_table(summary: list[dict]) -> str:
    """Markdown: per (bone, condition), failures flagged ``check``/``failed`` and false alarms."""
    lines = ["| bone | condition | failures (mTRE >= 2 mm) flagged | successes flagged (false alarms) |",
             "|---|---|---|---|"]
    for s in summary:
        (ff, f), (sf, n) = s["failures_flagged"], s["successes_flagged"]
        lines.append(f"| {s['bone']} | {s['condition']} | {ff} of {f} | {sf} of {n} |")
    return "\n".join(lines)


def summary_table(summary: list[dict], edges: list[float]) -> str:
    """Markdown in the study's layout: bone x condition -> translation, rotation, success, capture range."""
    lines = ["| bone | condition | runs | translation mm (in-plane / out-of-plane / total, median of successes) "
             "| rotation deg | mTRE mm | success <2 mm | <1 mm | capture range (initial mTRE, >= 95 %) "
             "| per-axis capture (mm / deg) | s per run (median) | the study |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        axes = s["axis_capture"]
        axis_text = ", ".join(f"{a} {v:g}" for a, v in axes.items()) if axes else "-"
        reach = s["capture_range_mm"]
        top = edges[-1]
        reach_text = f"{reach:g} mm" + (" (all bins tested)" if reach >= top else "")
        lines.append(
            f"| {s['bone']} | {s['condition']} | {s['runs']} "
            f"| {s['in_plane_mm']:.2f} / {s['out_of_plane_mm']:.2f} / {s['translation_mm']:.2f} "
            f"| {s['rotation_deg']:.2f} | {s['mtre_mm']:.2f} | {100 * s['success_2mm']:.1f} % "
            f"| {100 * s['success_1mm']:.1f} % | {reach_text} | {axis_text} | {s['seconds']:.1f} "
            f"| {STUDY.get((s['bone'], s['condition']), '-')} |")
    return "\n".join(lines)


def success_table(summary: list[dict], edges: list[float]) -> str:
    """Success rate (mTRE < 2 mm) per initial-mTRE bin, one row per (bone, condition)."""
    head = "| bone | condition | " + " | ".join(f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])) + " |"
    lines = [head, "|---|---|" + "---|" * (len(edges) - 1)]
    for s in summary:
        cells = ["-" if math.isnan(v) else f"{100 * v:.0f}%" for v in s["success_per_bin"]]
        lines.append(f"| {s['bone']} | {s['condition']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
