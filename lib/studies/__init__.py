"""One module (or sub-package) per experiment family; each module's docstring names its experiments.

Studies may import every lower layer (``lib.kv``, ``lib.data``, ``lib.report``, ``lib.lab``). A study
imports another study ONLY through the two named shared modules:

- ``lib.studies.priming`` (exp01; the shared base: prepared samples, work items, the run loop,
  ``analyse``), and
- ``lib.studies.conditions`` (exp02-05; the registry of named prefix conditions).

``conditions`` may import ``priming``, never the reverse. Modules inside one sub-package
(``reachability/``, ``encdec/``, ``latent/``) form one family and may import each other.
``tests/test_layout.py`` enforces this, the layer order and the absence of import cycles.
"""
