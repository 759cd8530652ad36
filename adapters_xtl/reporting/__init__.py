"""Reports of a run folder: the numbers (tables.py: scores, gains, intervals, significance) and
their faces (render.py: report.md, report.csv, terminal tables, heatmap, bars, XTREME summary), and
the results as a Hub dataset (hub_results.py: `xtl report --push`)."""

from .hub_results import push_results  # noqa: F401
from .render import (XTL_NOTE_E5, csv_text, heatmap, language_bars, markdown, rich_tables,  # noqa: F401
                     write_report, xtreme_section)
from .tables import (BASE, CORRECTIONS, GainStat, Stat, load_predictions, main_metric,  # noqa: F401
                     score_table, significance_note)
