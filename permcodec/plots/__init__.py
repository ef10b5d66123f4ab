"""Pictures of a .pc file (``permcodec report``): bits by layer, sorted weight profiles, rank displacement
and training curves, as matplotlib Figures or one self-contained HTML page.

    figures = permcodec.plots.report("m.pc", log="metrics.jsonl")   # {"bits": Figure, ...}
    permcodec.plots.write_report("m.pc", log="metrics.jsonl")         # m.report.html beside m.pc

Importing this package imports neither torch nor matplotlib; they load when a function runs.
"""

from .report import FIGURE_IDS, report, summary, write_report

__all__ = ["FIGURE_IDS", "report", "summary", "write_report"]
