"""transfergrid: the grid of image-classification transfer-learning experiments.

The Snakemake workflow under ``workflow/`` is a thin shell around this package:
every rule's script calls one function here, so all logic is importable and unit-tested.
"""

__version__ = "0.1.0"
