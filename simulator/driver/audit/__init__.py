"""The privacy audit of a run folder: read its files, check them, and write the report."""
