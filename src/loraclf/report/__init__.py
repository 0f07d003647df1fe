"""Reports of finished runs: `html` writes report/report.html (metrics, progress table, hardware) from the run
folder's files, `figures` draws its plots (curves, confusion, per-label, regression residuals, reliability),
`files` reads the run-folder files a report needs, `checks` shape-checks them (a damaged file is one error naming
it; damaged lines or rows are left out with a warning), and `compare` tabulates several runs (compare.md,
compare.csv, curves.png). It reads only run-folder files (loraclf.runs, task, base): no model, no
training."""

from .html import progress_table, write_report  # noqa: F401
