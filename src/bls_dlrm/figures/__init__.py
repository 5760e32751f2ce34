"""What every figure notebook uses, in one namespace: ``from bls_dlrm import figures as bf``.

The notebooks draw; what they draw is defined below them: tables are loaded by
:mod:`bls_dlrm.analysis.load`, runs grouped into workloads by
:mod:`bls_dlrm.analysis.workloads`, series compared by :mod:`bls_dlrm.analysis.compare`
(the same baseline rule and intervals as the claims table), thresholds read through
:mod:`bls_dlrm.analysis.protocol`. This package adds the style (:mod:`.style`) and the
captions (:mod:`.captions`).
"""

from bls_dlrm.analysis.compare import (
    BOOTSTRAP_SEED,
    CONFIDENCE,
    INTERVAL_COLUMNS,
    REPETITION_COLUMNS,
    baseline_series,
    best_bls,
    best_synchronous,
    paired_values,
    repetition_numbers,
    speedup_intervals,
    sync_baseline,
    with_speedup,
)
from bls_dlrm.analysis.load import SERVING_TABLE_NAMES, TABLE_NAMES, load_table, load_tables
from bls_dlrm.analysis.protocol import (
    figure_protocol,
    interval_settings,
    protocol_claims,
    threshold_text,
)
from bls_dlrm.analysis.workloads import (
    BOUND,
    CLASS_ORDER,
    OVERSUBSCRIBED,
    annotate_runs,
    attach_labels,
    most_common,
    pick_delayed_workload,
    pick_reference_workload,
    placement_of,
    primary_delay_kind,
    representative_run,
    workload_columns,
)
from bls_dlrm.figures.captions import caption, missing_note, sweep_facts
from bls_dlrm.figures.style import (
    CLASS_COLORS,
    COLUMN_WIDTH_IN,
    COMPONENT_COLORS,
    SYNC_COLORS,
    bls_color,
    figsize,
    footnote,
    palette,
    placeholder,
    plain_log_ticks,
    plain_number,
    save_drawn_data,
    save_figure,
    series_markers,
    set_plain_log_axis,
    set_style,
)
from bls_dlrm.paths import project_path, resolve_out_dir
from bls_dlrm.series import SYNC_COLLECTIVES, SYNC_SERIES, lag_of, series_label, series_sort_key

__all__ = [
    "BOOTSTRAP_SEED",
    "BOUND",
    "CLASS_COLORS",
    "CLASS_ORDER",
    "COLUMN_WIDTH_IN",
    "COMPONENT_COLORS",
    "CONFIDENCE",
    "INTERVAL_COLUMNS",
    "OVERSUBSCRIBED",
    "REPETITION_COLUMNS",
    "SERVING_TABLE_NAMES",
    "SYNC_COLLECTIVES",
    "SYNC_COLORS",
    "SYNC_SERIES",
    "TABLE_NAMES",
    "annotate_runs",
    "attach_labels",
    "baseline_series",
    "best_bls",
    "best_synchronous",
    "bls_color",
    "caption",
    "figsize",
    "figure_protocol",
    "footnote",
    "interval_settings",
    "lag_of",
    "load_table",
    "load_tables",
    "missing_note",
    "most_common",
    "paired_values",
    "palette",
    "pick_delayed_workload",
    "pick_reference_workload",
    "placeholder",
    "placement_of",
    "plain_log_ticks",
    "plain_number",
    "primary_delay_kind",
    "project_path",
    "protocol_claims",
    "repetition_numbers",
    "representative_run",
    "resolve_out_dir",
    "save_drawn_data",
    "save_figure",
    "series_label",
    "series_markers",
    "series_sort_key",
    "set_plain_log_axis",
    "set_style",
    "speedup_intervals",
    "sweep_facts",
    "sync_baseline",
    "threshold_text",
    "with_speedup",
    "workload_columns",
]
