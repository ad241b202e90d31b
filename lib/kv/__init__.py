"""Exact kernels, the lowest layer: models and their layout (``models``, ``bundled``: the offline GGUF conversion, ``rope``), cache surgery
(``cache``, ``encode``), scoring (``scoring``, ``engine``) and the pure-number helpers they need
(``noise``, ``hashing``, ``margin``). Imports nothing from the other ``lib`` packages.

Layer order, lowest first: kv, data, report, lab, studies, tools; a module imports only its own
package and lower layers (``tests/test_layout.py``).
"""
