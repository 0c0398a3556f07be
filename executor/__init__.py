"""Run a Plan for real under torchrun, record what happened, and compare with the prediction."""

from .report import RunReport, load_report

__all__ = ["RunReport", "load_report"]
