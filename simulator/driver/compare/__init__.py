"""Comparison grids: the runs of (method, seed, order) cells, their schedule, and paired
statistics."""
