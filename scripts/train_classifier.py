"""Train DigitNet on the digits train split and write its weights and report.

Everything is seeded and single-threaded so a rerun reproduces the committed
weights and `training_report.json`'s held-out accuracy exactly (same versions).

    python scripts/train_classifier.py [--out-dir DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing

from triton_guard_demo.digits import (  # noqa: E402
    SPLIT_SEED,
    TEST_SIZE,
    heldout_split,
    load_digits_uint8,
    normalize,
)
from triton_guard_demo.digits_net import DigitNet  # noqa: E402

SEED = 0
EPOCHS = 300
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4  # mild L2: the train split is only ~1350 images
WEIGHTS_FILE = "digits_net.pt"
REPORT_FILE = "training_report.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "model_repository" / "classifier" / "1",
        help="where digits_net.pt and training_report.json go",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="full-batch Adam steps")
    return parser.parse_args()


def make_reproducible(seed: int) -> None:
    """Pin every source of run-to-run variation we control."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def train(train_x: np.ndarray, train_y: np.ndarray, epochs: int) -> DigitNet:
    """Full-batch Adam on cross-entropy; the train split is small enough for one batch."""
    inputs = torch.from_numpy(normalize(train_x))
    targets = torch.from_numpy(train_y)
    model = DigitNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
    return model.eval()


def heldout_accuracy(model: DigitNet, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy of argmax(logits) on normalize(test_x), float32 on CPU, as the server computes it."""
    with torch.no_grad():
        predictions = model(torch.from_numpy(normalize(test_x))).argmax(dim=1).numpy()
    return float(np.mean(predictions == test_y))


def main() -> None:
    args = parse_args()
    make_reproducible(SEED)
    images, labels = load_digits_uint8()
    train_x, train_y, test_x, test_y = heldout_split(images, labels)

    started = time.perf_counter()
    model = train(train_x, train_y, args.epochs)
    training_seconds = time.perf_counter() - started
    accuracy = heldout_accuracy(model, test_x, test_y)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out_dir / WEIGHTS_FILE)
    report = {
        "heldout_accuracy": accuracy,
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
        "epochs": args.epochs,
        "learning_rate": LEARNING_RATE,
        "weight_decay": WEIGHT_DECAY,
        "seed": SEED,
        "split_seed": SPLIT_SEED,
        "test_size": TEST_SIZE,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "command": shlex.join(["python", "scripts/train_classifier.py", *sys.argv[1:]]),
    }
    (args.out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(f"held-out accuracy {accuracy:.4f} ({len(test_y)} digits), trained in {training_seconds:.1f} s")


if __name__ == "__main__":
    main()
