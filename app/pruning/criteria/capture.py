"""Layer inputs and outputs on calibration data, in every model format.

Data-driven criteria (wanda, apoz, reconstruction, sparsegpt) need what enters (or leaves)
each prunable layer. On an eager module, and on an ONNX model converted by onnx2torch (its
layers are called as modules), forward hooks see that. Two formats call no module:

* a ``.pt2`` program (``program.module()``): a flat graph of ``aten`` calls whose weights are
  ``get_attr`` nodes. It is interpreted node by node (``torch.fx.Interpreter``) and the input
  of every ``linear``/``conv``/``batch_norm`` call whose weight is the layer's is recorded;
* a TorchScript archive, which refuses hooks (``register_forward_pre_hook is not supported on
  ScriptModules``): its graph is converted once to an exported program (``torch._export``'s
  TorchScript converter; kept for the module's lifetime, parameters shared with the archive so
  the converted graph always sees the current weights) and interpreted the same way.

:func:`run_hooked` takes hooks with the signatures of ``register_forward_pre_hook`` /
``register_forward_hook`` and calls them in every format; a hook may raise
:class:`StopForward` to skip the rest of the batch's forward pass.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> program = torch.export.export(net, (torch.randn(2, 4),)).module()
    >>> seen = []
    >>> layer = dict(program.named_modules())["2"]
    >>> run_hooked(program, {layer: lambda m, args: seen.append(args[0].shape)}, True,
    ...            [torch.randn(2, 4)])
    >>> seen
    [torch.Size([2, 3])]
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress

import torch
from torch import Tensor, fx, nn

Hook = Callable[..., object]


class StopForward(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a hook that has what it needs: the rest of that batch's forward is skipped."""


_CONVERTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GEOMETRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def geometry(layer: nn.Module) -> nn.Module:
    """The layer itself, or for a conv inside a TorchScript/.pt2 graph (a plain module holding
    the weight) an equivalent ``nn.Conv1d/2d/3d`` on the meta device with the stride, padding,
    dilation and groups of its graph call, once a :func:`run_hooked` pass has seen it."""
    return _GEOMETRY.get(layer, layer)


def _twin(node: fx.Node, args: tuple, kwargs: dict, weight: Tensor) -> nn.Module | None:
    """An eager conv with the geometry of a graph's conv call (None: transposed)."""
    if weight.dim() < 3 or "transpose" in str(node.target):
        return None
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    named = {
        a.name: args[i] if i < len(args) else kwargs.get(a.name, a.default_value)
        for i, a in enumerate(schema.arguments)
    }
    if named.get("transposed"):
        return None
    dims, groups = weight.dim() - 2, int(named.get("groups") or 1)
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]

    def tup(v, default: int) -> tuple[int, ...]:
        v = default if v is None else v
        return tuple(int(e) for e in v) if isinstance(v, list | tuple) else (int(v),) * dims

    return cls(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tup(named.get("stride"), 1),
        padding=tup(named.get("padding"), 0),
        dilation=tup(named.get("dilation"), 1),
        groups=groups,
        bias=False,
        device="meta",
    )


def run_hooked(
    model: nn.Module, hooks: dict[nn.Module, Hook], pre: bool, inputs: Iterable[Tensor]
) -> None:
    """Run ``model`` on each of ``inputs`` (no grad) with ``hooks`` seeing its layers.

    Args:
        model: an eager module, a ``.pt2`` program's module, a TorchScript module (or a module
            holding one).
        hooks: layer -> ``hook(module, args)`` (``pre``) or ``hook(module, args, output)``.
        pre: forward pre-hooks (the layer's input) or forward hooks (input and output).
        inputs: the batches to run.

    Raises:
        ValueError: a layer whose input cannot be found in the model's graph.
    """
    owner = _graph_owner(model, hooks)
    with torch.no_grad():
        if owner is None:
            _run_eager(model, hooks, pre, inputs)
        else:
            with _interpreted(model, owner, hooks, pre) as run:
                for x in inputs:
                    _until_stopped(run, x)


def _until_stopped(run: Callable[[Tensor], object], x: Tensor) -> None:
    with suppress(StopForward):
        run(x)


def _run_eager(
    model: nn.Module, hooks: dict[nn.Module, Hook], pre: bool, inputs: Iterable[Tensor]
) -> None:
    handles = [
        m.register_forward_pre_hook(h) if pre else m.register_forward_hook(h)
        for m, h in hooks.items()
    ]
    try:
        for x in inputs:
            _until_stopped(model, x)
    finally:
        for h in handles:
            h.remove()


def _graph_owner(model: nn.Module, hooks: dict[nn.Module, Hook]) -> str | None:
    """The path of the outermost TorchScript module or exported graph whose layers are not
    called as modules (hooks cannot see them), or None when hooks work."""
    wanted = set(map(id, hooks))
    for path, module in model.named_modules():
        if not isinstance(module, torch.jit.ScriptModule | fx.GraphModule):
            continue
        inside = {id(m): p for p, m in module.named_modules() if id(m) in wanted}
        if not inside:
            continue
        if isinstance(module, torch.jit.ScriptModule):
            return path
        called = {str(n.target) for n in module.graph.nodes if n.op == "call_module"}
        if not set(inside.values()) <= called:
            return path
    return None


_CONSUMERS = frozenset(
    {
        "aten.linear.default",
        "aten.conv1d.default",
        "aten.conv2d.default",
        "aten.conv3d.default",
        "aten.conv_transpose1d.default",
        "aten.conv_transpose2d.input",
        "aten.convolution.default",
        "aten.batch_norm.default",
    }
)
"""Ops taking (input, weight, ...): the input a layer's hooks see is their first argument."""


def _watched(gm: fx.GraphModule, hooks: dict[nn.Module, Hook]) -> dict[fx.Node, nn.Module]:
    """Each ``linear``/``conv``/``batch_norm`` node -> the hooked layer whose weight it uses."""
    by_ptr = {
        m.weight.data_ptr(): m for m in hooks if isinstance(getattr(m, "weight", None), Tensor)
    }
    found: dict[fx.Node, nn.Module] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        value = _fetch(gm, str(node.target))
        layer = by_ptr.get(value.data_ptr()) if isinstance(value, Tensor) else None
        if layer is None:
            continue
        for user in node.users:
            if str(user.target) in _CONSUMERS and len(user.args) > 1 and user.args[1] is node:
                found[user] = layer
    missing = [m for m in hooks if m not in found.values()]
    if missing:
        names = {id(m): n for n, m in gm.named_modules()}
        name = names.get(id(missing[0]), type(missing[0]).__name__)
        raise ValueError(
            f"the input of layer '{name}' could not be found in the model's graph (its weight "
            "is not used by a linear, conv or batch_norm call), so data-driven criteria cannot "
            "score it; exclude it or choose a weight-only criterion."
        )
    return found


def _fetch(gm: nn.Module, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


class _Recorder(fx.Interpreter):
    """Interprets a graph and calls the hooks at the nodes that use a hooked layer's weight."""

    def __init__(self, gm: fx.GraphModule, watched, hooks, pre: bool) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.watched, self.hooks, self.pre = watched, hooks, pre

    def run_node(self, n: fx.Node):
        layer = self.watched.get(n)
        if layer is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if layer not in _GEOMETRY and "conv" in str(n.target):
            twin = _twin(n, args, kwargs, layer.weight)
            if twin is not None:
                _GEOMETRY[layer] = twin
        if self.pre:
            self.hooks[layer](layer, (args[0],))
        out = super().run_node(n)
        if not self.pre:
            self.hooks[layer](layer, (args[0],), out[0] if isinstance(out, tuple) else out)
        return out


class _Interpreting(nn.Module):
    """Stands in for a TorchScript module: converts it on first call, then interprets."""

    def __init__(self, script: nn.Module, hooks, pre: bool) -> None:
        super().__init__()
        self.script, self.hooks, self.pre = [script], hooks, pre  # a list: not a submodule

    def forward(self, *args):
        gm = _converted(self.script[0], args)
        return _Recorder(gm, _watched(gm, self.hooks), self.hooks, self.pre).run(*args)


def _converted(script: nn.Module, args: tuple) -> fx.GraphModule:
    """``script``'s graph as an exported program's module, its tensors shared with ``script``."""
    gm = _CONVERTED.get(script)
    if gm is None:
        from torch._export.converter import TS2EPConverter

        try:
            gm = TS2EPConverter(script, args).convert().module()
        except Exception as exc:
            raise ValueError(
                "data-driven criteria could not read this TorchScript model's layer inputs (its "
                f"graph could not be converted: {str(exc).splitlines()[0][:160]}); upload it as "
                ".pt2 or ONNX, or choose a weight-only criterion."
            ) from exc
        _CONVERTED[script] = gm
    own = dict(script.named_parameters()) | dict(script.named_buffers())
    for name, t in [*gm.named_parameters(), *gm.named_buffers()]:
        if name in own and t.data_ptr() != own[name].data_ptr():
            t.data = own[name].data  # share storage: in-place pruning shows in the graph
    return gm


@contextmanager
def _interpreted(
    model: nn.Module, owner: str, hooks: dict[nn.Module, Hook], pre: bool
) -> Iterator[Callable[[Tensor], object]]:
    """A callable running ``model`` with the graph at ``owner`` interpreted, hooks firing."""
    target = dict(model.named_modules())[owner]  # ScriptModules refuse get_submodule
    if isinstance(target, fx.GraphModule):
        watched = _watched(target, hooks)
        target.forward = lambda *a: _Recorder(target, watched, hooks, pre).run(*a)
        try:
            yield model
        finally:
            del target.forward
        return
    stand_in = _Interpreting(target, hooks, pre)
    if not owner:
        yield stand_in
        return
    parent_path, _, leaf = owner.rpartition(".")
    parent = dict(model.named_modules())[parent_path]
    setattr(parent, leaf, stand_in)
    try:
        yield model
    finally:
        setattr(parent, leaf, target)
