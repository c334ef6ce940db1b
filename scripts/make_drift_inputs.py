"""The digits demo's representative inputs for its drift reference: the held-out split as classifier PIXELS.

Writes an .npz of named arrays (`PIXELS`, [450, 64] FP32, what `classifier`
takes: preprocess's normalize of the held-out images) for

    .venv/bin/triton-guard drift record --model classifier --output PROBS --kind probs \\
        --inputs out/drift/heldout_pixels.npz

which writes model_repository/classifier/drift/PROBS.json (the reference classifier_guard uses).

    .venv/bin/python scripts/make_drift_inputs.py [--out out/drift/heldout_pixels.npz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from triton_guard_demo.digits import heldout_split, load_digits_uint8, normalize  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "drift" / "heldout_pixels.npz")
    args = parser.parse_args()
    _, _, images, _ = heldout_split(*load_digits_uint8())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, PIXELS=normalize(images).astype(np.float32))
    print(f"wrote {args.out}: PIXELS {list(images.shape[:1]) + [64]} (held-out split)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
