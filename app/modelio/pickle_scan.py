"""Read what a pickle would import, without unpickling it, and refuse anything beyond weights.

A ``pickletools`` walk lists every ``module.name`` a pickle's GLOBAL / STACK_GLOBAL / INST
opcodes name; a weights-only ``torch.save`` names only tensor rebuilders, storages, dtypes and
plain containers. Anything else (a whole ``nn.Module``, ``os.system``) is refused with a
sentence saying how to convert the file. No torch import.

Example:
    >>> import collections, pickle
    >>> pickle_globals(pickle.dumps(collections.OrderedDict(), protocol=2))
    ['collections.OrderedDict']
    >>> unsafe_globals(["collections.OrderedDict", "os.system"])
    ['os.system']
"""

from __future__ import annotations

import pickletools
from pathlib import Path

from app.errors import UnsupportedMedia

CONVERT_HINT = (
    "save a loadable model instead: torch.jit.save(torch.jit.script(model), 'model.pt'), "
    "torch.export.save(torch.export.export(model, (example,)), 'model.pt2'), "
    "torch.onnx.export(model, (example,), 'model.onnx', dynamo=False, external_data=False), "
    "or torch.save(model.state_dict(), 'weights.pt') uploaded with a built-in arch"
)


MAX_PICKLE_BYTES = 64 * 1024 * 1024


_ALLOWED_GLOBALS = {
    "collections.OrderedDict",
    "torch.Size",
    "builtins.set",
    "builtins.dict",
    "__builtin__.set",
    "__builtin__.dict",
}


_DANGEROUS_ROOTS = {
    "os",
    "posix",
    "nt",
    "subprocess",
    "builtins",
    "__builtin__",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pty",
    "code",
    "webbrowser",
    "ctypes",
    "pickle",
    "marshal",
    "types",
}


_TORCH_DTYPES = {
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "float",
    "double",
    "half",
    "long",
    "int",
    "short",
}


def check_legacy_pickle(path: Path) -> None:
    """Scan the pickles of a pre-1.6 ``torch.save`` file (magic, version, sys info, payload)."""
    with path.open("rb") as fh:
        data = fh.read(MAX_PICKLE_BYTES)
    found: list[str] = []
    pos = 0
    for _ in range(4):
        try:
            ops = list(pickletools.genops(data[pos:]))
        except Exception as exc:
            raise UnsupportedMedia(
                f"the file starts like an old torch.save checkpoint but it is damaged ({exc})"
            ) from exc
        found += _globals_from_ops(ops)
        pos += ops[-1][2] + 1
    if unsafe_globals(found):
        raise UnsupportedMedia(pickle_refusal(found))


def pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL / INST in a pickle, without unpickling."""
    try:
        ops = list(pickletools.genops(data))
    except Exception as exc:
        raise UnsupportedMedia(
            f"not a model file we recognise: an unreadable or truncated pickle ({exc})"
        ) from exc
    return _globals_from_ops(ops)


def _globals_from_ops(ops: list) -> list[str]:
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, str] = {}
    for op, arg, _pos in ops:
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif isinstance(arg, str) and "UNICODE" in name or name in ("STRING", "SHORT_BINSTRING"):
            strings.append(str(arg))
        elif name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[int(arg)] = strings[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
            strings.append(memo[int(arg)])
        elif name == "STACK_GLOBAL":
            mod, attr = (strings[-2], strings[-1]) if len(strings) >= 2 else ("?", "?")
            found.append(f"{mod}.{attr}")
    return found


def _allowed(qualname: str) -> bool:
    mod, _, attr = qualname.rpartition(".")
    if qualname in _ALLOWED_GLOBALS:
        return True
    if mod == "torch._utils" and attr.startswith("_rebuild_"):
        return True
    return bool(mod == "torch" and (attr.endswith("Storage") or attr in _TORCH_DTYPES))


def unsafe_globals(names: list[str]) -> list[str]:
    return [n for n in names if not _allowed(n)]


def pickle_refusal(names: list[str]) -> str:
    bad = unsafe_globals(names)
    shown = ", ".join(dict.fromkeys(bad[:5])) or "nothing we can name"
    dangerous = [n for n in bad if n.split(".", 1)[0] in _DANGEROUS_ROOTS]
    if dangerous:
        shown = ", ".join(dict.fromkeys(dangerous[:5]))
    if not dangerous and any(n.startswith("torch.nn.") for n in bad):
        what = f"a pickled whole model ({shown})"
    else:
        what = f"a pickle that imports code ({shown})"
    return f"this file is {what}, which PruneLab never unpickles; {CONVERT_HINT}"
