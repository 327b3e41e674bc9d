"""Write the built-in synthetic raw dataset (``synthetic`` section of params.yaml) to a folder.

    python -m components.synthesize [--out DIR] [--params params.yaml] [-S synthetic.seed=1]

``--out`` defaults to ``dataset.raw_dir`` when ``dataset.name`` is ``synthetic``; with another
dataset it must be given, so that real raw data is never overwritten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from components.cli import entry, load, make_parser, run_main
from dagan.data.synthetic import write_synthetic

DESCRIPTION = """Write the built-in synthetic scenes (the synthetic section of the params) as a raw dataset in
the custom folder layout."""

log = logging.getLogger("components.synthesize")


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("components.synthesize", DESCRIPTION)
    parser.add_argument("--out", help="output folder (default: dataset.raw_dir for dataset.name=synthetic)")
    args = parser.parse_args(argv)

    def body() -> int:
        config = load(args)
        out = args.out
        if out is None:
            if config.dataset.name != "synthetic":
                raise ValueError(f"dataset.name is {config.dataset.name}, so dataset.raw_dir "
                                 f"({config.dataset.raw_dir}) holds real data; pass --out DIR for the synthetic scenes")
            out = config.dataset.raw_dir
        syn = config.synthetic
        start = time.perf_counter()
        counts = write_synthetic(out, syn.seed, syn.num_train, syn.num_val, syn.size)
        log.info("wrote %s synthetic scenes of %dx%d to %s in %.1f s", counts, syn.size, syn.size, out,
                 time.perf_counter() - start)
        return 0

    return run_main(args, body)


if __name__ == "__main__":
    entry(main)
