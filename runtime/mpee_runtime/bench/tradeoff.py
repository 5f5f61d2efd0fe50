"""The accuracy/speed trade-off, shared by mpee-eval (FLOPs rho) and mpee-bench (measured speed-ups):
the Pareto front of operating points, the point chosen for an accuracy floor or a latency budget, and
the one line-plot function (the trade-off plot, and mpee-bench's speed-up by input length). Points are
typed records read by attribute (`x`, `y` name the attributes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def pareto_front(points: Sequence[Any], x: str = "speedup_mean", y: str = "metric") -> list[Any]:
    """Points not dominated by another (higher or equal in both x and y, strictly higher in one), by x."""
    def xy(p):
        return getattr(p, x), getattr(p, y)
    front = []
    for p in points:
        px, py = xy(p)
        if not any(qx >= px and qy >= py and (qx > px or qy > py) for qx, qy in map(xy, points)):
            front.append(p)
    return sorted(front, key=lambda p: getattr(p, x))


def fastest_within(points: Sequence[Any], *, floor: float, speed: str = "speedup_mean", y: str = "metric"
                   ) -> Any | None:
    """The fastest point (by `speed`, then `y`) whose `y` is at least `floor`; None when none is."""
    ok = [p for p in points if getattr(p, y) >= floor - 1e-12]
    return max(ok, key=lambda p: (getattr(p, speed), getattr(p, y))) if ok else None


@dataclass(frozen=True)
class Curve:
    """One series of the trade-off plot. Curves of the same `group` share a colour (the first one's)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]              # the metric as a fraction; plotted in percent
    style: str = "o-"
    group: str | None = None
    color: str | None = None
    alpha: float = 1.0
    markersize: float = 4
    hollow: Sequence[int] = ()       # indices of points drawn with an open marker (too few examples behind them)


@dataclass(frozen=True)
class Level:
    """A horizontal line: a reference model's metric."""

    y: float
    label: str
    group: str | None = None


def plot_tradeoff(path: Path, curves: Sequence[Curve], *, xlabel: str, ylabel: str, title: str,
                  levels: Sequence[Level] = (), percent: bool = True, legend_loc: str = "lower left"
                  ) -> str | None:
    """Metric (percent; `percent` False: y as given) against speed-up, one line per curve; None, or why the
    plot was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib not installed"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, str] = {}
    scale = 100 if percent else 1
    for c in curves:
        color = c.color or colors.get(c.group or "")
        ys = [scale * y for y in c.ys]
        hollow = set(c.hollow)
        line, = ax.plot(list(c.xs), ys, c.style, color=color, alpha=c.alpha, ms=c.markersize, label=c.label,
                        markevery=[i for i in range(len(ys)) if i not in hollow])
        if hollow:
            ax.plot([c.xs[i] for i in sorted(hollow)], [ys[i] for i in sorted(hollow)], c.style[:1] or "o",
                    color=line.get_color(), mfc="white", alpha=c.alpha, ms=c.markersize, ls="none")
        if c.group is not None:
            colors.setdefault(c.group, line.get_color())
    for lv in levels:
        ax.axhline(scale * lv.y, color=colors.get(lv.group or "", "grey"), lw=0.8, ls=":", label=lv.label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
