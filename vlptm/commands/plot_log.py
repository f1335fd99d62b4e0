"""``vlptm plot-log RUN --out curves.png``: draw a run's loss and metric curves from its JSONL log."""
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

    from vlptm.train.run_log import read_log

    entries = read_log(run)
    if not entries:
        raise ValueError(f"{run}: the log has no entries yet")
    available = sorted({k for e in entries for k, v in e.items() if isinstance(v, (int, float))} - {"step", "epoch"})
    if keys:
        unknown = sorted(set(keys) - set(available))
        if unknown:
            raise KeyError(f"keys {unknown} are not in the log; it has {available}")
    else:
        preferred = ("loss", "mlm", "mrfr", "mrc", "mrc_kl", "itm", "itc", "mlm_acc", "mrc_acc", "itm_acc", "itc_acc")
        keys = [k for k in preferred if k in available] + [k for k in ("lr", "examples_per_s") if k in available]
    cols = min(4, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(e["step"], e[key]) for e in entries if isinstance(e.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2)
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
