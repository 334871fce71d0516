"""Evaluation harness (van de Kraats et al. 2005): accuracy, success rate, capture range and loss
landscapes of the registration, per bone and condition, run serially or on Dask distributed.

    fluororeg evaluate --config exp.yaml --out DIR [--scheduler ADDRESS] [--workers N]
"""

from .config import Condition, Experiment, load_experiment
from .runner import run_experiment
from .starts import start_offsets
from .report import write_report
from .summary import capture_range, summarise, summary_table

__all__ = ["Condition", "Experiment", "capture_range", "load_experiment", "run_experiment", "start_offsets",
           "summarise", "summary_table", "write_report"]
