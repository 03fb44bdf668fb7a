"""lightning_classim: class-similarity structure of classifiers, streamed during validation.

See the README for the method (Alsallakh et al., 2020) and the set-up.
"""

from lightning_classim.functional import class_similarity
from lightning_classim.metric import ClassSimilarity

__version__ = "0.1.0"

__all__ = ["ClassSimilarity", "__version__", "class_similarity"]
