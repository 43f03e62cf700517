"""spine-hf: grade spine radiographs into five ordinal severity grades with the Hugging Face stack.

Research software, not a medical device.
"""

import logging

from spine_hf.grades import GRADE_NAMES, NUM_GRADES

__version__ = "0.1.0"
__all__ = ["GRADE_NAMES", "NUM_GRADES", "__version__", "setup_logging"]


def setup_logging() -> None:
    """What every entry point (`spine-hf`, `python -m spine_hf.train`) logs: warnings from libraries,
    information from spine-hf, one line each."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("spine_hf").setLevel(logging.INFO)
