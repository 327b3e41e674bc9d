"""The one exception of the data layer: bad input found while importing or reading a dataset.

It subclasses ValueError so that ``components.cli.run_main`` turns it into one line on stderr
and a non-zero exit. Every message names the file, the offending value and the fix.
"""

from __future__ import annotations


class DataError(ValueError):
    """Raw or prepared data is unusable; the message says which file, what is wrong and how to fix it."""
