"""Shared kernels for directed KV-cache and soft-prefix experiments.

Packages by layer, lowest first; a module imports only its own package and lower layers
(``tests/test_layout.py``):

    kv       exact kernels: models (+ bundled), rope, cache, encode, scoring, engine (+ noise, hashing, margin)
    data     samples and loaders, the offline registry, SQuAD, prefix texts, atomic JSON writes
    report   statistics, verdicts, tables, figures, the results index and overview
    lab      run stores, provenance and result writers, checkpoints, notebook kit, sweeps
    studies  one module per experiment family (shared: priming, conditions)
    tools    command-line tools over several studies (bench, reanalyse, noise_check)
"""
