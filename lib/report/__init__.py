"""Statistics, verdicts, tables, figures and the results index (no model). Imports ``lib.kv``,
``lib.data`` and this package only."""
