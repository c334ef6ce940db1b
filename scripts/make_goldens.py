"""Record the digits demo's goldens from a real server.

Starts a server (LocalServer) on free ports and records, with the same code
as `triton-guard goldens record`, one held-out digit of each class through
`pipeline` as model_repository/pipeline/goldens/digits.golden.json (for this
host's device class). Run it after retraining, and on a GPU host with --gpu
for the GPU expectations (the drift reference is recorded separately:
scripts/make_drift_inputs.py says how):

    .venv/bin/python scripts/make_goldens.py            # cpu
    .venv/bin/python scripts/make_goldens.py --gpu      # gpu (kept beside cpu's)

Against a server you run yourself, the goldens part is one command:
    triton-guard goldens record --model pipeline --inputs digits.npz --model-repository model_repository
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from triton_guard.canary.record import record  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402
from triton_guard_demo.digits import heldout_split, load_digits_uint8  # noqa: E402

CASE = "digits"


def golden_images(test_x: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """The first held-out digit of each class 0-9: every output row matters."""
    return np.stack([test_x[np.flatnonzero(test_y == label)[0]] for label in range(10)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="serve with the GPU configs, record the gpu expectations")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args()

    _, _, test_x, test_y = heldout_split(*load_digits_uint8())
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "tritonserver.log", "w") as log:
        inputs = Path(tmp) / f"{CASE}.npz"
        np.savez(inputs, IMAGE=golden_images(test_x, test_y))
        server = LocalServer(args.model_repository, Ports.free(), model_config_name="gpu" if args.gpu else None, log=log)
        with server:
            recorded = record(server.grpc_url, "pipeline", inputs, args.model_repository,
                              device_class="gpu" if args.gpu else "cpu")
            for line in recorded.describe():
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
