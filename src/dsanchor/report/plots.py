"""PNG plots for report.md (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dsanchor.features.types import GRANULARITY_CODES  # noqa: E402

__all__ = ["EXAMPLE_LEGEND", "plot_g_distribution", "plot_recall_vs_g", "plot_learning_curve", "plot_examples",
           "plot_tuning"]


def plot_g_distribution(g_t2i: torch.Tensor, granularity: torch.Tensor, path: str | Path, title: str) -> Path:
    """Histogram of the controller's g for each caption granularity."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = torch.linspace(0, 1, 26).numpy()
    groups = {name: granularity == code for name, code in GRANULARITY_CODES.items()}
    groups = {name: sel for name, sel in groups.items() if sel.any()}
    if not groups:  # captions without a granularity label (real data): one histogram
        groups = {"all captions": torch.ones(len(g_t2i), dtype=torch.bool)}
    for name, sel in groups.items():
        ax.hist(g_t2i[sel].numpy(), bins=bins, alpha=0.55, label=f"{name} (mean {g_t2i[sel].mean():.2f})")
    ax.set_xlabel("g (0 = coarse / scene, 1 = fine / objects)")
    ax.set_ylabel("text queries")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_recall_vs_g(curve: list[dict], methods: dict, path: str | Path, k: int = 1) -> Path:
    """Text-to-image R@k for each fixed g on the test split (exact protocol where it exists), with DSA and the
    oracle as lines."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    key = f"R@{k}"
    proto = "exact" if all("exact" in c for c in curve) else None

    def get(row: dict) -> float:
        return (row[proto] if proto else row)["t2i"][key]

    ax.plot([c["g"] for c in curve], [get(c) for c in curve], "o-", label="fixed g", color="tab:gray")
    styles = {"dsa_ppo": ("tab:red", "-"), "gate_grad": ("tab:blue", "--"), "oracle": ("tab:green", ":")}
    for name, (color, ls) in styles.items():
        if name in methods:
            label = name + (" (upper bound)" if name == "oracle" else "")
            ax.axhline(get(methods[name]), color=color, ls=ls, label=label)
    ax.set_xlabel("g")
    ax.set_ylabel(f"text→image {key} ({proto or 'paired'})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_learning_curve(curve_json: str | Path, path: str | Path, title: str = "PPO learning curve") -> Path:
    """Mean reward and mean g per PPO rollout."""
    curve = json.loads(Path(curve_json).read_text())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [c["timesteps"] for c in curve]
    ax.plot(steps, [c["mean_reward"] for c in curve], color="tab:red", label="mean reward")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean reward")
    ax2 = ax.twinx()
    ax2.plot(steps, [c["mean_g"] for c in curve], color="tab:blue", ls="--", label="mean g")
    ax2.set_ylabel("mean g")
    ax.set_title(title)
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


EXAMPLE_LEGEND = {
    "exact": ("the caption is true of this image (its scene graph; exact protocol)",
              "the caption is not true of this image"),
    "paired": ("the caption's own image (paired protocol: the data has no scene graphs)",
               "another image (it may still fit the caption: paired relevance cannot tell)"),
}


def plot_examples(examples: list[dict], path: str | Path, protocol: str = "paired") -> Path:
    """A grid: one row per query (caption, g), then its top-3 images, framed by relevance under ``protocol``.

    ``protocol`` is "exact" (green: the caption is true of the image, from the scene graphs) or "paired"
    (green: the caption's own image); a legend under the grid says which. Each example is ``{"caption",
    "granularity", "g", "top": [(image_path, relevant, own), ...]}`` (``own``: the caption's own image, marked
    "own"; it may be left out).
    """
    from matplotlib.patches import Patch

    rows = len(examples)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows + 0.5), squeeze=False)
    for r, ex in enumerate(examples):
        for c in range(3):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(ex["top"]):
                ax.axis("off")
                continue
            img_path, hit, *rest = ex["top"][c]
            ax.imshow(Image.open(img_path).convert("RGB"))
            for side in ax.spines.values():
                side.set_edgecolor("tab:green" if hit else "tab:red")
                side.set_linewidth(3)
            ax.set_xlabel(f"#{c + 1}" + (" ✓" if hit else " ✗") + (" (own image)" if rest and rest[0] else ""),
                          fontsize=8)
        caption = "\n".join(textwrap.wrap(ex["caption"], 60))
        axes[r][0].set_title(f"[{ex['granularity']}, g={ex['g']:.2f}] {caption}", fontsize=8, loc="left")
    yes, no = EXAMPLE_LEGEND[protocol]
    fig.legend(handles=[Patch(facecolor="none", edgecolor="tab:green", linewidth=3, label="✓ green: " + yes),
                        Patch(facecolor="none", edgecolor="tab:red", linewidth=3, label="✗ red: " + no)],
               loc="lower center", fontsize=7, frameon=False, ncol=1)
    fig.tight_layout(rect=(0, 0.45 / (2.6 * rows + 0.5), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_tuning(trials: list[dict], path: str | Path) -> Path:
    """The tuning objective over the searched space: against beta/alpha (log), and over the two clip bounds."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    if trials:
        p = [t["params"] for t in trials]
        v = [t["value"] for t in trials]
        sc = a.scatter([x["ratio"] for x in p], v, c=[x["clip_high"] for x in p], cmap="viridis")
        fig.colorbar(sc, ax=a, label="clip_high")
        a.set_xscale("log")
        sc2 = b.scatter([x["clip_low"] for x in p], [x["clip_high"] for x in p], c=v, cmap="magma", s=60)
        fig.colorbar(sc2, ax=b, label="objective")
        best = max(range(len(v)), key=v.__getitem__)
        a.scatter([p[best]["ratio"]], [v[best]], marker="*", s=200, color="red", label="best")
        a.legend()
    a.set_xlabel("beta / alpha")
    a.set_ylabel("2-fold val objective")
    b.set_xlabel("clip_low")
    b.set_ylabel("clip_high")
    fig.suptitle(f"Optuna GPSampler, {len(trials)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_hard_negatives(result: dict, path: str | Path) -> Path:
    """Hard-negative accuracy per type (groups) and method (bars), with the bootstrap intervals; chance at 0.5."""
    import numpy as np

    from dsanchor.data.hardneg import HARD_NEGATIVE_TYPES

    methods = list(result["methods"])
    kinds = [k for k in HARD_NEGATIVE_TYPES if any(k in r for r in result["methods"].values())]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(kinds), 3.4))
    width = 0.8 / max(len(methods), 1)
    for i, name in enumerate(methods):
        row = result["methods"][name]
        acc = [row[k]["accuracy"] if k in row else np.nan for k in kinds]
        err = [[row[k]["accuracy"] - row[k]["lo"] if k in row else 0 for k in kinds],
               [row[k]["hi"] - row[k]["accuracy"] if k in row else 0 for k in kinds]]
        ax.bar(np.arange(len(kinds)) + (i - (len(methods) - 1) / 2) * width, acc, width, yerr=err, capsize=2,
               label=name)
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(np.arange(len(kinds)), kinds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (true text scores higher)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("compositional hard negatives (test scenes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
