"""Flipped copies at scoring time: image AUROC on validation and test of a fitted bundle when
each part's score is combined with its mirror images' (the bank is unchanged).

    python benchmarks/flip_tta.py --model runs/variants/sealant/patchcore/defaults
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from anomaly.artifacts.bundle import load_bundle, read_config
from anomaly.data import load_dataset
from anomaly.evaluation import metrics
from anomaly.io.images import load_image

MIRRORS = {
    "part": lambda image: image,
    "horizontal": lambda image: np.ascontiguousarray(image[:, ::-1]),
    "vertical": lambda image: np.ascontiguousarray(image[::-1]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a fitted bundle")
    args = parser.parse_args()
    model = load_bundle(args.model)
    model.progress = False
    dataset = load_dataset(read_config(args.model))
    for split in ("val", "test"):
        samples = dataset.select(split)
        labels = np.array([sample.label for sample in samples])
        images = [load_image(sample.path) for sample in samples]
        size = model.batch_size
        batches = [images[i : i + size] for i in range(0, len(images), size)]
        scores = {}
        for name, mirror in MIRRORS.items():
            scores[name] = np.concatenate(
                [model.score_arrays([mirror(image) for image in batch])[0] for batch in batches]
            )
        part, horizontal = scores["part"], scores["horizontal"]
        combined = {
            "part alone": part,
            "mean with horizontal mirror": (part + horizontal) / 2,
            "max with horizontal mirror": np.maximum(part, horizontal),
            "min with horizontal mirror": np.minimum(part, horizontal),
            "mean with both mirrors": (part + horizontal + scores["vertical"]) / 3,
        }
        for name, values in combined.items():
            print(f"{split:<5} {name:<28} AUROC {metrics.image_auroc(labels, values):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
