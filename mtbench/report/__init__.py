"""Report directories, summaries and plots."""
