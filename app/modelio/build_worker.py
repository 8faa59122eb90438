"""Child process: build an untrained built-in architecture and save it as safetensors.

Run by the web process for ``POST /api/models/from-architecture`` (the web process never
imports torch): ``python -m app.modelio.build_worker ARCH NUM_CLASSES C,H,W OUT``.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    arch, num_classes, shape, out = argv
    import torch
    from safetensors.torch import save_file

    from app.zoo import build

    torch.seed()  # a fresh initialisation each time (each untrained model is its own)
    model = build(
        arch, num_classes=int(num_classes), input_shape=tuple(int(d) for d in shape.split(","))
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out, metadata={"arch": arch, "num_classes": num_classes, "input_shape": shape})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(3)
