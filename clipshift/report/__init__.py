"""Figures of the paper, rendered from the store, and the HTML page that shows them."""

from ..defaults import FIGURE_FORMATS
from .figures import FIGURES
from .render import FigureResult, ReportResult, report

__all__ = ["FIGURES", "FIGURE_FORMATS", "FigureResult", "ReportResult", "report"]
