"""The benchmark catalogue: which data a run can use, its sites, and the generated benchmarks.

``catalog`` parses benchmark specs and lists sites (driver side, no pixels); ``order``
resolves visiting orders; ``phantom`` and ``mni152`` generate site data (called inside
site actors) and the public pools that pre-train the SMD backbone.
"""
