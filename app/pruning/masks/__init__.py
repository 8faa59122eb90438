"""Masks: which weights a pruning step removes, and keeping them removed.

Masks are bool tensors shaped like each layer's weight, True = kept (as in
``torch.nn.utils.prune``), applied by zeroing in place.

* :mod:`~app.pruning.masks.compute`: ``validate`` a spec against a model, ``compute_masks``;
* :mod:`~app.pruning.masks.plan`: ``MaskPlan``, the outcome of one step;
* :mod:`~app.pruning.masks.select` and :mod:`~app.pruning.masks.ranking`: choosing units from
  their scores (global or layer-wise, sparsity, threshold, N:M);
* :mod:`~app.pruning.masks.keeper`: ``apply_masks`` and ``MaskKeeper`` (training with masks).
"""
