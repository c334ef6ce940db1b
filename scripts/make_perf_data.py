"""Write a perf_analyzer `--input-data` file of real held-out digits.

Benchmarking with real images (not perf_analyzer's random bytes) keeps the
load representative of what the classifier actually sees.

    python scripts/make_perf_data.py [--out FILE] [--count N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing

from triton_guard_demo.digits import heldout_split, load_digits_uint8  # noqa: E402

INPUT_NAME = "IMAGE"  # the ensemble's UINT8 [8, 8] input
DEFAULT_COUNT = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "digits_perf_input.json",
        help="perf_analyzer --input-data JSON to write",
    )
    parser.add_argument(
        "--count", type=int, default=DEFAULT_COUNT, help="held-out digits to include (the first N)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    images, labels = load_digits_uint8()
    _, _, test_x, _ = heldout_split(images, labels)
    entries = [
        {INPUT_NAME: {"content": image.reshape(-1).tolist(), "shape": list(image.shape)}}
        for image in test_x[: args.count]
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": entries}) + "\n")
    print(f"wrote {len(entries)} held-out digits to {args.out}")


if __name__ == "__main__":
    main()
