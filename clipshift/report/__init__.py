"""Figures of the paper, rendered from the store, and the HTML page that shows them."""

from .figures import FIGURES
from .render import FORMATS, FigureResult, ReportResult, report

__all__ = ["FIGURES", "FORMATS", "FigureResult", "ReportResult", "report"]
