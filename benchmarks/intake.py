"""Intake benchmark: preflight time of a 25M-parameter model, and server RSS during a big upload.

    .venv/bin/python benchmarks/intake.py [--upload-mb 500] [--skip-upload]

Targets (issue 4): preflight of a 25M-parameter model < 30 s on a 2-core machine; the server's
peak RSS grows by < 50 MB while a 500 MB upload streams in.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from app import zoo
from app.modelio.detect import detect_format
from app.modelio.preflight import run_preflight


class WideCNN(nn.Module):
    """About 25M parameters of conv and linear layers, the shape of a mid-sized image model."""

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 256, 512, 1024, 1024]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(1024 * 2 * 2, 2400), nn.ReLU(), nn.Linear(2400, 100)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _time_preflight(path: Path, **kw) -> tuple[float, dict]:
    start = time.perf_counter()
    fmt = detect_format(path)
    report = run_preflight(path, fmt, timeout_s=120, memory_mb=8192, threads=2, **kw)
    return time.perf_counter() - start, report


def bench_preflight(work: Path) -> None:
    torch.manual_seed(0)
    mlp = zoo.build("mlp", num_classes=10, input_shape=(1, 288, 288))
    save_file(mlp.state_dict(), str(work / "mlp.safetensors"))
    cnn = WideCNN().eval()
    onnx_path = work / "wide.onnx"
    torch.onnx.export(
        cnn,
        (torch.zeros(1, 3, 32, 32),),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        external_data=False,
    )
    cases = [
        (
            "safetensors + arch mlp",
            work / "mlp.safetensors",
            {"arch": "mlp", "input_shape": (1, 288, 288)},
        ),
        ("ONNX wide CNN", onnx_path, {}),
    ]
    for label, path, kw in cases:
        seconds, r = _time_preflight(path, **kw)
        verdict = "OK" if seconds < 30 else "OVER TARGET"
        print(
            f"preflight {label}: {r['n_params'] / 1e6:.1f}M params, {path.stat().st_size / 1e6:.0f} MB, "
            f"{seconds:.1f} s wall (child reports {r['seconds']:.1f} s), groups={len(r['groups'])}, "
            f"structured_ok={r['structured_ok']}  [target < 30 s: {verdict}]"
        )


def _rss_mb(pid: int) -> float:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_upload(work: Path, mb: int) -> None:
    exe = shutil.which("prunelab") or str(Path(sys.executable).with_name("prunelab"))
    if not Path(exe).exists():
        print("upload RSS: pending (no `prunelab serve` available yet)")
        return
    import httpx

    token, port = secrets.token_urlsafe(24), _free_port()
    env = dict(
        os.environ,
        PRUNELAB_DATA_DIR=str(work / "data"),
        PRUNELAB_ADMIN_TOKEN=token,
        PRUNELAB_MAX_UPLOAD_MB=str(mb + 10),
    )
    server = subprocess.Popen(
        [exe, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                httpx.get(base + "/api/architectures", headers={"Authorization": f"Bearer {token}"})
                break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            print("upload RSS: pending (the server did not start)")
            return
        before = _rss_mb(server.pid)
        peak, done = [before], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak.append(_rss_mb(server.pid))
                time.sleep(0.05)

        boundary = secrets.token_hex(8)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        chunk = os.urandom(1024 * 1024)

        def body():
            yield head
            for _ in range(mb):
                yield chunk
            yield tail

        threading.Thread(target=watch, daemon=True).start()
        start = time.perf_counter()
        resp = httpx.post(
            base + "/api/models",
            content=body(),
            timeout=600,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
        seconds = time.perf_counter() - start
        done.set()
        growth = max(peak) - before
        verdict = "OK" if growth < 50 else "OVER TARGET"
        print(
            f"upload {mb} MB: HTTP {resp.status_code} in {seconds:.1f} s "
            f"({mb / seconds:.0f} MB/s); server RSS {before:.0f} MB -> peak {max(peak):.0f} MB "
            f"(+{growth:.0f} MB) [target < 50 MB: {verdict}]"
        )
        leftovers = [
            p for p in (work / "data").rglob("*") if p.is_file() and "prunelab.db" not in p.name
        ]
        print(f"files left under DATA_DIR after the refused upload: {len(leftovers)}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload-mb", type=int, default=500)
    parser.add_argument("--skip-upload", action="store_true")
    parser.add_argument("--skip-preflight", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prunelab-bench-"))
    try:
        if not args.skip_preflight:
            bench_preflight(work)
        if not args.skip_upload:
            bench_upload(work, args.upload_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
