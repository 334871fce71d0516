"""Pictures of an experiment: success rate against initial mTRE, error distributions, landscapes."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success(summary: list[dict], edges: list[float], path) -> None:
    """Success rate (mTRE < 2 mm) per initial-mTRE bin, one line per (bone, condition)."""
    plt = _plt()
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in summary:
        ax.plot(centres, [100 * v for v in s["success_per_bin"]], marker="o",
                linestyle="-" if s["condition"] == "mask" else "--", label=f"{s['bone']}, {s['condition']}")
    ax.axhline(95, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("initial mTRE (mm, bin centre)")
    ax.set_ylabel("success (mTRE < 2 mm), %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_errors(rows: list[dict], path) -> None:
    """Distributions of the final mTRE, in-plane, out-of-plane and rotation errors per (bone, condition)."""
    plt = _plt()
    keys = list(dict.fromkeys((r["bone"], r["condition"]) for r in rows))
    metrics = [("mtre_mm", "mTRE (mm)"), ("in_plane_mm", "in-plane (mm)"), ("out_of_plane_mm", "out-of-plane (mm)"),
               ("rotation_deg", "rotation (deg)")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, (k, label) in zip(axes, metrics):
        data = [[r[k] for r in rows if (r["bone"], r["condition"]) == key] for key in keys]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(keys) + 1), [f"{b}\n{c}" for b, c in keys], fontsize=7)
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_landscapes(landscapes: list[dict], out: Path) -> list[Path]:
    """One figure per (frame, bone): the six 1D sweeps (a line per condition) above the 2D slices."""
    plt = _plt()
    paths = []
    for item in landscapes:
        conds = item["conditions"]
        slices = [(name, sl) for name, c in conds.items() for sl in c.get("slices", [])]
        cols = max(6, len(slices))
        rows = 2 if slices else 1
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
        for name, c in conds.items():
            for j, (axis, sw) in enumerate(c["sweeps"].items()):
                ax = axes[0, j]
                ax.plot(sw["offsets"], sw["similarity"],
                        label=f"{name}: {sw['local_minima']} minima, basin {sw['basin_width']:.1f}")
                ax.set_title(axis + (" (deg)" if axis.startswith("r") else " (mm)"), fontsize=9)
                ax.legend(fontsize=6)
        for k, (name, sl) in enumerate(slices):
            ax = axes[1, k]
            a, b = sl["offsets_a"], sl["offsets_b"]
            ax.imshow(sl["similarity"], origin="lower", extent=[b[0], b[-1], a[0], a[-1]], aspect="auto")
            ax.set_xlabel(sl["axes"][1])
            ax.set_ylabel(sl["axes"][0])
            ax.set_title(name, fontsize=8)
        for ax in list(axes[0, 6:]) + (list(axes[1, len(slices):]) if slices else []):
            ax.axis("off")
        fig.suptitle(f"similarity around the truth: frame {item['frame']}, {item['bone']}")
        fig.tight_layout()
        path = out / f"landscape_{item['frame']}_{item['bone']}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths
