"""``vlptm plot-log RUN --out curves.png``: draw a run's loss and metric curves from its JSONL log.

When the run also validated (``RUN/validation.jsonl``), its held-out points join the panels of the same
metric (``mlm_acc``, ``itm_acc`` ...) and the held-out ``R@1``/``R@5``/``R@10`` get panels of their own."""
from __future__ import annotations

import argparse
import logging

NAME = "plot-log"
HELP = "plot the loss/metric curves of a training run's log.jsonl to a PNG"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or its log.jsonl)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--keys", nargs="*", default=None,
                        help="what to plot (default: every loss and accuracy in the log)")


def plot_log(run: str, out: str, keys=None) -> list:
    """Write one panel per key (losses, accuracies, lr, throughput) against the step; returns the keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathlib import Path

    from vlptm.train.run_log import VALIDATION_FILE, read_log

    entries = read_log(run)
    if not entries:
        raise ValueError(f"{run}: the log has no entries yet")
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    held_out = read_log(run_dir / VALIDATION_FILE) if (run_dir / VALIDATION_FILE).is_file() else []
    numeric = {k for e in entries + held_out for k, v in e.items() if isinstance(v, (int, float))}
    available = sorted(numeric - {"step", "epoch", "images", "queries", "seconds"})
    if keys:
        unknown = sorted(set(keys) - set(available))
        if unknown:
            raise KeyError(f"keys {unknown} are not in the log; it has {available}")
    else:
        preferred = ("loss", "mlm", "mrfr", "mrc", "mrc_kl", "itm", "itc", "mlm_acc", "mrc_acc", "itm_acc", "itc_acc")
        keys = [k for k in preferred + ("R@1", "R@5", "R@10") if k in available]
        keys += [k for k in ("lr", "examples_per_s") if k in available]
    cols = min(4, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for series, style, label in ((entries, "-", "train"), (held_out, "o-", "held-out")):
            points = [(e["step"], e[key]) for e in series if isinstance(e.get(key), (int, float))]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style if len(points) > 1 else "o",
                        linewidth=1.2, markersize=3, label=label)
        if held_out and any(key in e for e in held_out):
            ax.legend(fontsize=7)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return list(keys)


def run(args: argparse.Namespace) -> int:
    try:
        keys = plot_log(args.run, args.out, args.keys)
    except (FileNotFoundError, KeyError, ValueError) as err:
        log.error("%s", err)
        return 2
    log.info("wrote %s (%s)", args.out, ", ".join(keys))
    return 0
