"""Export a pruned model in every offered format, then reload each file and check its outputs.

``export_all`` writes ``pruned.pt`` (TorchScript), ``pruned.onnx`` (opset 17, dynamic batch),
``pruned.safetensors`` (+ ``architecture.json`` for a structurally pruned model),
``recipe.json``, and for a model loaded from a ``.pt2`` program ``pruned.pt2`` (dynamic batch,
BatchNorm still trainable). The example batch is in the model's own input dtype (int64 token ids stay
int64, so ``pruned.onnx`` declares an int64 input) and at a batch the model accepts
(``export_input.export_batch``). Every file is written atomically (a temporary file in the same
folder, then ``os.replace``), reloaded the way a user would load it, and run on the example
batch, and on a batch of 1 and of one more sample wherever the in-memory model takes those;
the artifact row says whether its outputs match the in-memory model (``verified``) and by how
much (``max_abs_diff``). A format that fails is reported with ``verified: False`` and an
``error`` sentence (its file removed when it could not be written or reloaded, kept when it
runs but differs or runs only at the traced batch); the other exports still happen.

Example:
    >>> from app import zoo
    >>> from app.pruning.spec import Recipe
    >>> from app.pruning.structural.rebuild import architecture_config
    >>> model = zoo.build("cnn_small")
    >>> rows = export_all(model, torch.zeros(16, 1, 8, 8), tempfile.mkdtemp(),
    ...                   recipe=Recipe.from_dict({"pruning": {"sparsity": 0.5}}).to_dict(),
    ...                   arch_config=architecture_config(model, arch="cnn_small"))
    >>> all(r["verified"] for r in rows)
    True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.modelio.export_checks import (
    check_batches,
    failed_row,
    file_sha256,  # noqa: F401 - imported from here by app.runs
    first_output,
    max_diff,
    other_batches,
    passed_row,
    tolerance,
)
from app.modelio.export_input import traceable
from app.modelio.pt2 import is_program
from app.pruning.structural.rebuild import rebuild

ONNX_OPSET = 17


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``; moved onto it only when the block succeeds."""
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}"
    )  # torch.export.save wants .pt2
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> Callable:
    model = traceable(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values are expected
        traced = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, x)
    with _atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda inp: loaded(inp)


def _write_onnx(model: nn.Module, x: torch.Tensor, path: Path, *, dynamo: bool = False) -> Callable:
    """``pruned.onnx`` by the tracing exporter, or by the ``torch.export``-based one (``dynamo``,
    batch axis declared dynamic: for models whose trace fixes the batch, or that the tracing
    exporter cannot write)."""
    import onnxruntime as ort

    names = {"input_names": ["input"], "output_names": ["output"]}
    with _atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(
                traceable(model),
                (x,),
                str(tmp),
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: batch},),
                verbose=False,
                **names,
            )
        else:
            torch.onnx.export(
                traceable(model),
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                external_data=False,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                **names,
            )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda inp: session.run(None, {name: inp.numpy()})[0]


def _write_pt2(model: nn.Module, x: torch.Tensor, path: Path) -> Callable:
    """``pruned.pt2``: a pruned ``.pt2`` program exported back, batch axis dynamic where it can
    be, reloaded as the lab loads programs (BatchNorm trainable after ``train()``)."""
    from app.modelio.pt2 import export_program, load_program

    program = export_program(model, x)
    with _atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
    loaded = load_program(str(path))
    return lambda inp: loaded(inp)


def _write_safetensors(model: nn.Module, path: Path, arch_config: Mapping | None) -> Callable:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with _atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    # with an architecture the check is the real route back (rebuild); without one the file is
    # loaded into a copy of the model, which checks the weights but not the structure
    fresh = rebuild(arch_config) if arch_config is not None else copy.deepcopy(model)
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()
    return lambda inp: fresh(inp)


def _write_json(obj: object, path: Path) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if json.loads(path.read_text(encoding="utf-8")) != json.loads(json.dumps(obj)):
        raise ValueError(f"{path.name} did not read back as written")


def export_all(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    recipe: Mapping,
    arch_config: Mapping | None = None,
) -> list[dict]:
    """Write and verify every artifact of a pruned model.

    Args:
        model: the pruned model (masked or physically smaller); exported from a CPU copy in
            eval mode, the original is untouched.
        example_input: real inputs for tracing and verification, in the model's input dtype
            and at a batch it accepts (``export_input.export_batch``).
        out_dir: folder to write into (created if missing).
        recipe: the run's recipe as a JSON-able dict (written to ``recipe.json``).
        arch_config: ``structural.rebuild.architecture_config(model, ...)`` for a structurally pruned
            model; written to ``architecture.json`` and used to reload the safetensors file.

    Returns:
        One row per file: ``{"name", "kind", "size_bytes", "verified", "max_abs_diff",
        "sha256"}`` plus ``"error"`` (one sentence) when that export failed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = example_input.detach().cpu()
    with torch.inference_mode():
        expected = first_output(cpu_model(x))
    check = _Check(x, expected, other_batches(cpu_model, x))
    rows: list[dict] = []
    onnx_writers = [lambda p: _write_onnx(cpu_model, x, p)]
    if x.shape[0] > 1:  # torch.export specialises a batch of 1
        onnx_writers.append(lambda p: _write_onnx(cpu_model, x, p, dynamo=True))
    writers: list[tuple[str, str, list[Callable[[Path], Callable]]]] = [
        ("pruned.pt", "torchscript", [lambda p: _write_torchscript(cpu_model, x, p)]),
        ("pruned.onnx", "onnx", onnx_writers),
    ]
    if is_program(cpu_model):  # a .pt2 upload: also a program back, whose BatchNorm trains
        writers.append(("pruned.pt2", "pt2", [lambda p: _write_pt2(cpu_model, x, p)]))
    if arch_config is not None:
        try:
            _write_json(dict(arch_config), out / "architecture.json")
        except Exception as exc:  # noqa: BLE001 - reported on the artifact row
            rows.append(
                failed_row("architecture.json", "architecture", out / "architecture.json", exc)
            )
            arch_config = None
    writers.append(
        (
            "pruned.safetensors",
            "safetensors",
            [lambda p: _write_safetensors(cpu_model, p, arch_config)],
        )
    )
    rows += [_export_one(name, kind, tries, out / name, check) for name, kind, tries in writers]
    if arch_config is not None:
        arch_path = out / "architecture.json"
        safetensors_ok = rows[-1]["verified"]
        rows.append(passed_row("architecture.json", "architecture", arch_path, 0.0, 1.0))
        rows[-1].update(verified=safetensors_ok, max_abs_diff=rows[-2]["max_abs_diff"])
    try:
        _write_json(dict(recipe), out / "recipe.json")
        rows.append(passed_row("recipe.json", "recipe", out / "recipe.json", 0.0, 1.0))
    except Exception as exc:  # noqa: BLE001
        rows.append(failed_row("recipe.json", "recipe", out / "recipe.json", exc))
    return rows


@dataclasses.dataclass(frozen=True)
class _Check:
    """The example batch, the pruned model's outputs on it, and the other batches to try."""

    x: torch.Tensor
    expected: torch.Tensor
    others: list


def _export_one(
    name: str, kind: str, tries: list[Callable[[Path], Callable]], path: Path, check: _Check
) -> dict:
    """Write ``path`` with the first writer, reload and check it; when it fails its check, the
    next writer (the dynamo ONNX exporter) tries beside it and replaces it only if it passes.
    Returns the row of the file that passed, else the first writer's (with its ``error``)."""
    first: dict | None = None
    for i, write in enumerate(tries):
        target = path if i == 0 else path.with_name(f".retry-{path.name}")
        try:
            run = write(target)
            with torch.inference_mode():
                diff = max_diff(check.expected, run(check.x))
            row = passed_row(name, kind, target, diff, tolerance(check.expected))
            why = row.get("error") or check_batches(run, check.others, name, len(check.x))
            if why is None:
                if target != path:
                    os.replace(target, path)
                return row
            row.update(verified=False, error=why)
        except Exception as exc:  # noqa: BLE001 - one failed format must not sink the others
            row = failed_row(name, kind, target, exc)
        if first is None:
            first = row
        elif target.exists():
            target.unlink()
    assert first is not None
    return first
