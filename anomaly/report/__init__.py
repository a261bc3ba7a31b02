"""``anomaly report``: a self-contained HTML report of a score run for QA review at the line.

The report is ``report.html`` plus its ``report_files/`` folder of JPEG images beside it; see
:func:`write_report`.
"""

from anomaly.report.writer import write_report

__all__ = ["write_report"]
