"""Running things: result stores and provenance (``runs``, ``codestate``), training checkpoints
(``ckpt``), notebook parameters (``notebook``) and grids of notebook runs (``sweep``). Imports
``lib.kv``, ``lib.data``, ``lib.report`` and this package only."""
