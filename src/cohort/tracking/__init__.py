"""Metrics history, writers, progress and plots."""

from cohort.tracking.plot import plot_runs
from cohort.tracking.progress import ConsoleProgress, format_record
from cohort.tracking.writers import CSV_COLUMNS, CsvWriter, JsonlWriter, MetricsWriter, read_jsonl

__all__ = ["CSV_COLUMNS", "ConsoleProgress", "CsvWriter", "JsonlWriter", "MetricsWriter", "format_record", "plot_runs", "read_jsonl"]
