"""Regenerate the canary's goldens and the drift monitor's reference from a real server.

Starts a server (LocalServer) on free ports, sends one fixed request through
`pipeline` (one held-out digit of each class) and writes
model_repository/canary/goldens/<device class>.json with the outputs, their
sha256 and the environment they were made in; then sends the whole held-out
split and writes goldens/reference.json, the output distribution the drift
monitor compares live traffic with. Run it after retraining, and on a GPU host
with --gpu for the GPU goldens:

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

from triton_guard_demo.digits import heldout_split, load_digits_uint8  # noqa: E402
from triton_guard.drift.monitor import REFERENCE_FILE, Reference  # noqa: E402
from triton_guard.canary.goldens import GOLDENS_DIR, Golden, output_hash  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402

# Max |dPROBS| still accepted as "the same model": far above float32 rounding
# differences between devices (~1e-7), far below what a changed weight does.
TOLERANCE = 1e-4


MAX_BATCH = 64  # pipeline's max_batch_size


def golden_images(test_x: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """The first held-out digit of each class 0-9: every output row matters."""
    return np.stack([test_x[np.flatnonzero(test_y == label)[0]] for label in range(10)])


def infer(client, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    result = client.infer("pipeline", [image])
    return result.as_numpy("LABEL"), result.as_numpy("PROBS")


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

    _, _, test_x, test_y = heldout_split(*load_digits_uint8())
    images = golden_images(test_x, test_y)
    with tempfile.TemporaryFile("w+") as log:
        server = LocalServer(args.model_repository, Ports.free(), model_config_name="gpu" if args.gpu else None, log=log)
        with server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            labels, probs = infer(client, images)
            heldout_probs = np.concatenate(
                [infer(client, test_x[i : i + MAX_BATCH])[1] for i in range(0, len(test_x), MAX_BATCH)]
            )
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
    goldens_dir = args.model_repository / "canary" / GOLDENS_DIR
    out = goldens_dir / f"{device_class}.json"
    out.write_text(golden.to_json() + "\n")
    print(f"wrote {out}: labels {labels.reshape(-1).tolist()} sha256 {golden.sha256[:16]}...")
    if device_class == "cpu":  # one reference: the distribution, not the rounding, matters
        reference = goldens_dir / REFERENCE_FILE
        reference.write_text(Reference.from_probs(heldout_probs).to_json() + "\n")
        print(f"wrote {reference}: output distribution of {len(heldout_probs)} held-out digits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
