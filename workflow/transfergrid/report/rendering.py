"""The report's figures rendered to PNG data URIs, several at once.

Drawing and rasterising is most of what rendering a report costs (7.5 of the 9 s it took on the
default grid), and the figures are independent of each other, so a pool of forked processes
renders them, each taking the next figure as it finishes one. Forked workers inherit the plotting
functions (closures over the report's tables), so only a key goes to a worker and a URI comes back.
Where ``fork`` is unavailable, or with one process, they are rendered in turn. The bytes are the
same either way: each figure is drawn from the same inputs by the same code in the same style.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Hashable
from concurrent.futures import ProcessPoolExecutor

from .figures import figure_to_data_uri, plot_style

Plot = Callable[[], object]  # draws one figure and returns it (a matplotlib Figure)

# The plots of the render_figures call in progress, which its forked workers inherit.
_plots: dict[Hashable, Plot] = {}


def render(plot: Plot) -> str:
    with plot_style():
        return figure_to_data_uri(plot())


def render_figures(plots: dict[Hashable, Plot], processes: int = 1) -> dict[Hashable, str]:
    """``{key: data URI}`` for every plot, in up to ``processes`` forked processes. A figure that
    fails raises its own exception here, with the worker's traceback as its cause."""
    global _plots
    processes = min(processes, len(plots))
    if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return {key: render(plot) for key, plot in plots.items()}
    _plots = plots
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            return dict(zip(plots, pool.map(_render_key, plots)))
    finally:
        _plots = {}


def _render_key(key: Hashable) -> str:
    return render(_plots[key])
