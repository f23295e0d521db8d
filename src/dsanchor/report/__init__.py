"""results.json, report.md and plots."""

from dsanchor.report.results import METHOD_ORDER, build_results, granularity_table, main_table, merge_seeds

__all__ = ["METHOD_ORDER", "build_results", "merge_seeds", "main_table", "granularity_table"]
