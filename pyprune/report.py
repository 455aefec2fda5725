"""Result reports shared by the pipelines: markdown tables and PNG plots (written atomically)."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from .io import atomic_write


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a markdown table: first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def save_plot(path: str, draw: Callable, title: str, xlabel: str, ylabel: str) -> bool:
    """Draw with ``draw(axis)`` on a 6x4 figure and write it to `path` as PNG, atomically.

    Returns False (and writes nothing) when matplotlib is not installed: plots are an optional extra.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(6, 4))
    try:
        draw(axis)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.legend(fontsize=7)
        figure.tight_layout()
        atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=120), binary=True)
    finally:
        plt.close(figure)
    return True
