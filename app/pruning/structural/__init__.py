"""Structure: physical removal of filters and channels and what it needs.

* :mod:`~app.pruning.structural.graph`: the channels a mask removes, per coupled group of
  Torch-Pruning's dependency graph (``plan_removal``, ``RemovalPlan``);
* :mod:`~app.pruning.structural.remove`: ``physical_prune``, ``zero_removed_units``,
  ``removal_blockers``;
* :mod:`~app.pruning.structural.coupling`: ``coupled_layers``, the groups ranked as one;
* :mod:`~app.pruning.structural.blocks`: ``remove_blocks`` (level ``layer``, physical);
* :mod:`~app.pruning.structural.bn`: ``recalibrate_bn``;
* :mod:`~app.pruning.structural.bias`: ``capture_means``, ``correct_biases`` (BN-free nets);
* :mod:`~app.pruning.structural.rebuild`: ``architecture_config`` and ``rebuild``.
"""
