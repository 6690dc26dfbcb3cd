"""The driver: the only package that wires ``sites/`` and ``server/`` together.

``cli`` parses arguments, ``commands`` runs one subcommand each, ``api`` is what tests
and notebooks call, ``plan`` validates and resolves a run once, ``engine`` is the only
Ray importer, and ``results``, ``runfolder``, ``ledger``, ``progress``, ``audit``,
``compare`` and ``bench`` handle what a run writes and reports.
"""
