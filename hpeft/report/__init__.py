"""Reading run records back: collection and the comparison table."""

from hpeft.report.runs import load_summaries
from hpeft.report.table import comparison_rows, print_comparison

__all__ = ["comparison_rows", "load_summaries", "print_comparison"]
