"""Channel-importance criteria, one file per family: norms and BN scale (``_base``), weight and
output criteria without data (``_weight``), data-based criteria (``_data``), ThiNet and LASSO
(``_reconstruct``). A low score means prune.

Adding a criterion: ``@register_criterion("name")`` on a function of the graph and a
:class:`CriterionContext`; see ``_base.py``.
"""
from __future__ import annotations

from compressor.criteria._base import CriterionContext, CriterionSpec, aggregate_member_scores, get_criterion, list_criteria, producer_weights, register_criterion
import compressor.criteria._weight  # noqa: F401  (registers its criteria)
import compressor.criteria._data  # noqa: F401  (registers its criteria)
import compressor.criteria._reconstruct  # noqa: F401  (registers its criteria)

__all__ = [
    "CriterionContext", "CriterionSpec", "aggregate_member_scores", "get_criterion", "list_criteria", "producer_weights",
    "register_criterion",
]
