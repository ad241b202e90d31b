"""Running things: resumable result stores (``runs``), provenance and the results.json / per_item.csv
writers (``records``, ``codestate``), training checkpoints (``ckpt``), notebook parameters
(``notebook``), grids of notebook runs (``sweep``) and peak-memory measurement (``peakmem``).
Imports ``lib.kv``, ``lib.data``, ``lib.report`` and this package only."""
