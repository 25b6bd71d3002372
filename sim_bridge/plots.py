"""The reward-cost scatter of a dataset's episodes (one PNG beside the dataset)."""

from __future__ import annotations

from pathlib import Path

from reachsafe.sim_bridge.collect import EpisodeStats


def scatter_png(stats: list[EpisodeStats], out: Path, title: str) -> Path:
    """Episode return vs episode cost, coloured by behaviour policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for name in sorted({s.policy for s in stats}):
        pts = [s for s in stats if s.policy == name]
        ax.scatter(
            [s.cost for s in pts], [s.ret for s in pts], s=22, alpha=0.75, label=f"{name} ({len(pts)})"
        )
    ax.set_xlabel("episode cost")
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
