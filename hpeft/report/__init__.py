"""Reading run records back: collection, the comparison table, Pareto frontiers, synergy and the HTML report.

    from hpeft.report import collect, to_rows, mark_pareto, synergy_rows, build_page
    summaries, skipped = collect(runs=["runs"])
    rows, _ = to_rows(summaries); mark_pareto(rows)
"""

from hpeft.report.page import build_page
from hpeft.report.pareto import linear_expectation, pareto_mask, per_kparam, synergy_gain
from hpeft.report.rows import mark_pareto, synergy_rows, to_rows
from hpeft.report.runs import load_summaries
from hpeft.report.sources import collect
from hpeft.report.table import comparison_rows, print_comparison

__all__ = ["build_page", "collect", "comparison_rows", "linear_expectation", "load_summaries", "mark_pareto",
           "pareto_mask", "per_kparam", "print_comparison", "synergy_gain", "synergy_rows", "to_rows"]
