"""The verdict table's layouts (``--claims-table``); kept apart so the plugin reads them
without importing the reports."""

TABLE_LAYOUTS: tuple[str, ...] = ("auto", "full", "compact")
"""``full``: every column; ``compact``: fits 100 columns; ``auto``: full when it fits."""
