"""TODO: report"""

from .html import progress_table, write_report  # noqa: F401
