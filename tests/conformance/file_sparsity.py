"""The achieved sparsity measured in an exported file, not in the module that wrote it.

Each prunable weight of the pruned module is found in the file by its values (exporters rename
and transpose weights: ONNX ``MatMul`` takes ``W.T`` under an ``onnx::MatMul_..`` name) or, for
a conv with BatchNorm folded in, by its shape and the places of its zeros; the file's copy is
counted, so a file that lost its zeros, or a weight, fails or reads differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.pruning.layers import prunable_layers


def file_tensors(path: Path) -> list[np.ndarray]:
    """Every float tensor an exported file holds (ONNX initializers and constants, a program's
    state, TorchScript or safetensors tensors)."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        found = [numpy_helper.to_array(t) for t in model.graph.initializer]
        for node in model.graph.node:
            found += [numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"]
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        found = list(load_file(str(path)).values())
    elif path.suffix == ".pt2":
        found = [t.detach().numpy() for t in torch.export.load(str(path)).state_dict.values()]
    else:
        found = [t.numpy() for t in torch.jit.load(str(path)).state_dict().values()]
    return [t for t in found if t.dtype.kind == "f" and t.ndim >= 2]


def sparsity_in_file(path: Path, module: nn.Module) -> float:
    """Zeros over weights, counted in the file's copy of each of ``module``'s prunable weights."""
    tensors = file_tensors(path)
    zeros = total = 0
    for name, layer in prunable_layers(module).items():
        weight = layer.weight.detach().cpu().numpy()
        match = _find(weight, tensors)
        assert match is not None, f"the weight of {name} is not in {path.name}"
        zeros += int((match == 0).sum())
        total += match.size
    return zeros / total


def _find(weight: np.ndarray, tensors: list[np.ndarray]) -> np.ndarray | None:
    """The file's copy of ``weight``: the same values in any order (renamed, transposed), else
    a tensor of its shape with zeros in the same places (BatchNorm folded into a conv scales
    each filter)."""
    want = np.sort(weight.ravel())
    for t in tensors:
        if t.size == weight.size and np.array_equal(np.sort(t.ravel()), want):
            return t
    for t in tensors:
        if t.shape == weight.shape and np.array_equal(t == 0, weight == 0):
            return t
    return None
