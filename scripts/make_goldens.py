"""Regenerate the canary's golden outputs by asking a real server.

Starts `triton-guard serve` (via LocalServer) on free ports, sends one fixed
request through `pipeline` (one held-out digit of each class), and writes
model_repository/canary/goldens/<device class>.json with the outputs, their
sha256 and the environment they were made in. Run it after retraining, and on
a GPU host with --gpu for the GPU goldens:

    .venv/bin/python scripts/make_goldens.py            # goldens/cpu.json
    .venv/bin/python scripts/make_goldens.py --gpu      # goldens/gpu.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from triton_guard.digits import heldout_split, load_digits_uint8  # noqa: E402
from triton_guard.goldens import GOLDENS_DIR, Golden, output_hash  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402

# Max |dPROBS| still accepted as "the same model": far above float32 rounding
# differences between devices (~1e-7), far below what a changed weight does.
TOLERANCE = 1e-4


def golden_images() -> np.ndarray:
    """The first held-out digit of each class 0-9: every output row matters."""
    _, _, test_x, test_y = heldout_split(*load_digits_uint8())
    return np.stack([test_x[np.flatnonzero(test_y == label)[0]] for label in range(10)])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="serve with the GPU configs, write goldens/gpu.json")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args()
    device_class = "gpu" if args.gpu else "cpu"

    images = golden_images()
    with tempfile.TemporaryFile("w+") as log:
        server = LocalServer(args.model_repository, Ports.free(), model_config_name="gpu" if args.gpu else None, log=log)
        with server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            image = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
            image.set_data_from_numpy(images)
            result = client.infer("pipeline", [image])
            labels, probs = result.as_numpy("LABEL"), result.as_numpy("PROBS")
            server_version = client.get_server_metadata().version

    import torch

    golden = Golden(
        device_class=device_class,
        images=images,
        labels=labels,
        probs=probs,
        sha256=output_hash(labels, probs),
        tolerance=TOLERANCE,
        environment={
            "device_class": device_class,
            "tritonserver": server_version,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu": cpu_model(),
            "gpu": torch.cuda.get_device_name(0) if args.gpu and torch.cuda.is_available() else None,
        },
    )
    out = args.model_repository / "canary" / GOLDENS_DIR / f"{device_class}.json"
    out.write_text(golden.to_json() + "\n")
    print(f"wrote {out}: labels {labels.reshape(-1).tolist()} sha256 {golden.sha256[:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
