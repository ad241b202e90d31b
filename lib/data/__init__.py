"""Data layer: the sample schema and loaders (``core``, re-exported here so ``from lib.data import
load_samples, Sample, synthetic_qa`` works), the offline registry of real sets (``registry``,
``realdata``), SQuAD v1.1 scoring (``squad``), prefix texts (``surrogates``) and atomic JSON writes
(``jsonio``). Imports only ``lib.kv`` and this package.

    python -m lib.data prepare    # fetch, extract and verify the registry sets (lib/data/__main__.py)
"""
from lib.data.core import *  # noqa: F401,F403
