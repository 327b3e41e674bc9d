"""``python -m components.studio``: the painting page (:mod:`components.studio.cli`)."""

from components.cli import entry
from components.studio.cli import main

entry(main)
