"""The preflight child process: ``python -m app.modelio.preflight_worker WORKDIR``.

Reads ``WORKDIR/request.json``, writes ``WORKDIR/result.json``: either the preflight report or
``{"error": "<LabError subclass>", "message": "<one sentence>"}``. Started only by
:func:`app.modelio.preflight.run_preflight`, under its resource limits.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from app.errors import Invalid, LabError
from app.modelio.batches import check_batch_of_two, check_fixed_batch
from app.modelio.load import LoadedModel, load_model, set_eval
from app.modelio.signature import example_input
from app.modelio.weights import hidden_weights, seen_warning

PRUNABLE_KINDS = {"Conv1d", "Conv2d", "Linear"}
# module types Torch-Pruning knows how to cut; other leaf modules with weights block removal
_TP_KINDS = PRUNABLE_KINDS | {
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm2d",
    "Embedding",
    "PReLU",
    "MultiheadAttention",
    "LSTM",
    "ConvTranspose2d",
}


def inspect_model(request: dict) -> dict:
    """Load, run a zero input and describe the model (see ``run_preflight`` for the keys)."""
    start = time.perf_counter()
    torch.set_num_threads(max(1, int(request.get("threads") or 1)))
    loaded = _load(request)
    assert loaded.input_shape is not None
    model = loaded.module
    set_eval(model)
    check_fixed_batch(loaded)
    x = example_input(loaded.input_shape, loaded.input_dtype)
    order: list[str] = []
    out = _forward(model, x, loaded, order)
    check_batch_of_two(model, loaded)
    n_classes = int(out.shape[-1]) if out.dim() >= 2 else None
    expected = request.get("num_classes")
    if expected and n_classes != int(expected):
        raise Invalid(f"the model outputs {n_classes} classes but num_classes is {expected}")
    layers = list_layers(model, loaded.format)
    n_params = sum(p.numel() for p in model.parameters())
    prunable = sum(layer["n_params"] for layer in layers if layer["prunable"])
    if not prunable:
        raise Invalid(
            "the lab sees no weights it can prune in this model (no Conv or Linear layer holds "
            "parameters); export it so its layers keep their weights as parameters"
        )
    hidden = hidden_weights(model)
    warnings = list(loaded.notes) + seen_warning(n_params, hidden)
    groups: list[list[str]] = []
    if loaded.rebuildable:
        output_layer = order[-1] if order else None
        groups, blockers = dependency_groups(model, x, output_layer)
        warnings += blockers
    return {
        "ok": True,
        "format": loaded.format,
        "arch": loaded.arch,
        "input_shape": list(loaded.input_shape),
        "input_dtype": loaded.input_dtype,
        "output_shape": list(out.shape[1:]),
        "num_classes": n_classes,
        "n_params": int(n_params),
        "layers": layers,
        "prunable_fraction": round(prunable / n_params, 6) if n_params else 0.0,
        "weights_seen_fraction": round(n_params / (n_params + sum(hidden.values())), 6),
        "groups": groups,
        "residual_blocks": removable_blocks(model),
        "attention_heads": attention_modules(model),
        "structured_ok": bool(loaded.rebuildable and groups),
        "rebuildable": loaded.rebuildable,
        "warnings": warnings,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _load(request: dict) -> LoadedModel:
    shape = request.get("input_shape")
    loaded = load_model(
        Path(request["path"]),
        request["format"],
        arch=request.get("arch"),
        num_classes=request.get("num_classes"),
        input_shape=tuple(shape) if shape else None,
        input_dtype=request.get("input_dtype"),
    )
    if loaded.input_shape is None:
        raise Invalid(
            f"input_shape is required for a {loaded.format} model: the file does not say what "
            "one input looks like (e.g. 1,8,8 for one 8x8 grey image, 16 for 16 token ids)"
        )
    return loaded


def _forward(model: nn.Module, x: torch.Tensor, loaded: LoadedModel, order: list[str]):
    handles = []
    if loaded.rebuildable:
        for name, mod in model.named_modules():
            if type(mod).__name__ in PRUNABLE_KINDS:
                handles.append(mod.register_forward_hook(lambda *_a, n=name: order.append(n)))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        text = _error_line(exc)
        raise Invalid(
            f"the model's forward raised {type(exc).__name__} on a zero input of shape "
            f"{list(x.shape)} (check input_shape): {text}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise Invalid(f"the model's forward returned a {type(out).__name__}, not a tensor")
    return out


def _error_line(exc: BaseException) -> str:
    """The line of an error a user needs: TorchScript wraps the real message (its last line,
    e.g. ``builtins.RuntimeError: ...``) under a long interpreter traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and "Traceback" in str(exc):
        return lines[-1][:300]
    return " ".join(" ".join(lines).split())[:300] or type(exc).__name__


def list_layers(model: nn.Module, fmt: str) -> list[dict]:
    """Every module that holds parameters directly: name, kind, weight shape, size, prunable."""
    if fmt == "pt2":
        return _pt2_layers(model)
    rows = []
    for name, mod in model.named_modules():
        params = dict(mod.named_parameters(recurse=False))
        if not params:
            continue
        kind = getattr(mod, "original_name", None) or type(mod).__name__
        weight = params.get("weight", next(iter(params.values())))
        rows.append(_row(name, kind, weight, sum(p.numel() for p in params.values())))
    return rows


def _row(name: str, kind: str, weight: torch.Tensor, n: int) -> dict:
    prunable = kind in PRUNABLE_KINDS and weight.dim() >= 2
    return {
        "name": name,
        "kind": kind,
        "shape": list(weight.shape),
        "n_params": int(n),
        "prunable": prunable,
    }


def _pt2_layers(model: nn.Module) -> list[dict]:
    kinds: dict[str, str] = {}
    for node in model.graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            kinds[str(path)] = str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1]
    by_layer: dict[str, dict[str, torch.Tensor]] = {}
    for pname, p in model.named_parameters():
        layer, _, leaf = pname.rpartition(".")
        by_layer.setdefault(layer, {})[leaf] = p
    rows = []
    for layer, params in by_layer.items():
        weight = params.get("weight", next(iter(params.values())))
        kind = kinds.get(layer) or {2: "Linear", 3: "Conv1d", 4: "Conv2d"}.get(weight.dim(), "")
        rows.append(
            _row(layer, kind or "Parameter", weight, sum(p.numel() for p in params.values()))
        )
    return rows


def removable_blocks(model: nn.Module) -> list[list[str]]:
    """The layers of each residual block granularity 'layer' can remove ([] when none)."""
    from app.pruning.topology import residual_blocks

    try:
        return [list(block.layers) for block in residual_blocks(model)]
    except Exception:  # noqa: BLE001 - a model fx cannot trace has no removable block
        return []


def attention_modules(model: nn.Module) -> list[list[str]]:
    """The q/k/v/output layers of each attention module granularity 'head' can cut."""
    from app.pruning.structural.transformer import attention_layers

    return [list(a.layers) for a in attention_layers(model)]


def dependency_groups(
    model: nn.Module, x: torch.Tensor, output_layer: str | None
) -> tuple[list[list[str]], list[str]]:
    """Torch-Pruning's coupled groups (names cut together) and what blocks physical removal."""
    import torch_pruning as tp

    blockers = _foreign_weight_layers(model)
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        return [], [*blockers, f"structured pruning is not possible: tracing failed ({text})"]
    modules = dict(model.named_modules())
    ignored = [modules[output_layer]] if output_layer in modules else []
    roots = [nn.Conv1d, nn.Conv2d, nn.Linear]
    groups: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    try:
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=roots):
            names = _group_names(group, graph)
            key = tuple(sorted(names))
            if names and key not in seen:
                seen.add(key)
                groups.append(names)
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        blockers.append(f"structured pruning is not possible: grouping failed ({text})")
    if not groups:
        blockers.append("no layer can be cut structurally (no prunable group outside the output)")
    return groups, blockers


def _group_names(group, graph) -> list[str]:
    names: list[str] = []
    for item in group:
        dep = item[0] if isinstance(item, tuple) else item.dep
        mod = dep.target.module
        name = graph._module2name.get(mod)
        if name and any(True for _ in mod.parameters(recurse=False)) and name not in names:
            names.append(name)
    return names


def _foreign_weight_layers(model: nn.Module) -> list[str]:
    out = []
    for name, mod in model.named_modules():
        if any(True for _ in mod.parameters(recurse=False)) and type(mod).__name__ not in _TP_KINDS:
            out.append(
                f"layer {name!r} ({type(mod).__name__}) holds weights structured pruning cannot "
                "cut; the channels it touches stay whole"
            )
    return out[:10]


def main(argv: list[str]) -> int:
    workdir = Path(argv[1])
    out = workdir / "result.json"
    try:
        request = json.loads((workdir / "request.json").read_text())
        result = inspect_model(request)
    except LabError as exc:
        result = {"error": type(exc).__name__, "message": exc.message}
    except MemoryError:
        result = {
            "error": "Invalid",
            "message": "the model needs more memory than preflight allows",
        }
    except Exception as exc:  # the one catch-all: any other failure is the model's
        text = " ".join(str(exc).split())[:300]
        result = {
            "error": "Invalid",
            "message": f"the model failed preflight: {type(exc).__name__}: {text}",
        }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
