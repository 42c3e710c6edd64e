"""Reports: per-scale summary statistics, text and HTML (:mod:`.summary`)."""

from .summary import format_summary, scale_statistics, twonn_dimension, twonn_log_ratios, write_html

__all__ = ["format_summary", "scale_statistics", "twonn_dimension", "twonn_log_ratios", "write_html"]
