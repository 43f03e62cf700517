"""spine-hf: grade spine radiographs into five ordinal severity grades with the Hugging Face stack.

Research software, not a medical device.
"""

from spine_hf.grades import GRADE_NAMES, NUM_GRADES

__version__ = "0.1.0"
__all__ = ["GRADE_NAMES", "NUM_GRADES", "__version__"]
