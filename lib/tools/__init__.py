"""Command-line tools that drive several studies, the top layer (nothing imports them):

    python -m lib.tools.bench          # engine speed (exp01's designs; --design many8: bench_memory)
    python -m lib.tools.reanalyse      # re-analyse committed runs from per_item.csv (exp01-03, 05-07)
    python -m lib.tools.noise_check    # float noise between batch compositions

They may import every package, studies included.
"""
