"""HTML reports of the outputs: ``sub-<label>.html`` per participant and ``group/group.html``.

Both are single self-contained files (images embedded, no script), made from the output folder only.
"""
from bidsrecon.reports.group_report import write_group_report
from bidsrecon.reports.participant_report import write_participant_report

__all__ = ["write_group_report", "write_participant_report"]
