"""Data layer: ``load_samples`` (``core``, re-exported here with the schema so ``from lib.data import
load_samples, Sample, synthetic_qa`` works) over the sample schema (``schema``), the hub sets (``hub``)
and the synthetic generator (``synthetic``), the offline registry of real sets (``registry``,
``realdata``), SQuAD v1.1 scoring (``squad``), prefix texts (``surrogates``) and atomic JSON writes
(``jsonio``). Imports only ``lib.kv`` and this package.

    python -m lib.data prepare    # fetch, extract and verify the registry sets (lib/data/__main__.py)
"""
from lib.data.core import *  # noqa: F401,F403
