"""report.rendering: figures rendered in forked processes are the bytes rendered in turn, and a
figure that fails, or a worker that dies, is an error in the report job, never a hang."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool
from functools import partial

import matplotlib.pyplot as plt
import pytest

from transfergrid.report.rendering import render_figures


def line_plot(slope: float):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [0, slope, 2 * slope])
    ax.set_title(f"slope {slope}")
    return fig


def failing_plot():
    raise ValueError("no data for this figure")


def dying_plot():
    os._exit(3)


PLOTS = {("figures", i): partial(line_plot, slope) for i, slope in enumerate([0.5, 1.0, 2.0, -1.0, 3.0])}


def test_several_processes_render_the_same_bytes_in_the_same_order():
    in_turn = render_figures(PLOTS, processes=1)
    forked = render_figures(PLOTS, processes=2)
    assert list(forked) == list(PLOTS)
    assert forked == in_turn
    assert len(set(in_turn.values())) == len(PLOTS)  # each figure its own image
    assert all(uri.startswith("data:image/png;base64,") for uri in in_turn.values())


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_figure_raises_its_own_error(processes):
    with pytest.raises(ValueError, match="no data for this figure"):
        render_figures({**PLOTS, ("figures", "broken"): failing_plot}, processes=processes)


def test_a_worker_that_dies_breaks_the_rendering_instead_of_hanging():
    with pytest.raises(BrokenProcessPool):
        render_figures({**PLOTS, ("figures", "dies"): dying_plot}, processes=2)
