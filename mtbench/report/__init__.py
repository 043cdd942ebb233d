"""Report directories, summaries and plots.

`write_report` writes a run's directory atomically, `load_report` reads one back, `print_summary`
prints its rich tables and `trace_fingerprint` identifies the trace it ran on. Layout: FORMAT.md.
"""

from mtbench.report.directory import Report, load_report, validate_out_dir
from mtbench.report.output import write_report
from mtbench.report.summary import print_summary, render_markdown, trace_fingerprint
from mtbench.report.writer import ReportWriter, default_report_dir

__all__ = [
    "Report", "ReportWriter", "default_report_dir", "load_report", "print_summary", "render_markdown",
    "trace_fingerprint", "validate_out_dir", "write_report",
]
