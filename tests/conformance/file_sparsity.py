"""The achieved sparsity measured in an exported file, not in the module that wrote it.

Each prunable weight of the pruned module is found in the file by its values (exporters rename
and transpose weights: ONNX ``MatMul`` takes ``W.T`` under an ``onnx::MatMul_..`` name), and
the file's copy is counted, so a file that lost its zeros, or a weight, reads differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.pruning.layers import prunable_layers


def file_tensors(path: Path) -> list[np.ndarray]:
    """Every float tensor an exported file holds (ONNX initializers and constants, TorchScript
    or safetensors tensors)."""
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
    else:
        found = [t.numpy() for t in torch.jit.load(str(path)).state_dict().values()]
    return [t for t in found if t.dtype.kind == "f" and t.ndim >= 2]


def sparsity_in_file(path: Path, module: nn.Module) -> float:
    """Zeros over weights, counted in the file's copy of each of ``module``'s prunable weights."""
    tensors = file_tensors(path)
    by_values = {}
    for t in tensors:
        by_values.setdefault(t.size, []).append(np.sort(t.ravel()))
    zeros = total = 0
    for name, layer in prunable_layers(module).items():
        want = np.sort(layer.weight.detach().cpu().numpy().ravel())
        match = next((t for t in by_values.get(want.size, []) if np.array_equal(t, want)), None)
        assert match is not None, f"the weight of {name} is not in {path.name}"
        zeros += int((match == 0).sum())
        total += match.size
    return zeros / total
