"""Exact versus approximate nearest-neighbour search on one PatchCore bundle's bank.

Extracts the patch features of the validation and test splits once (with the bundle's own
runtime), then scores them with the bundle's bank searched exactly (faiss ``IndexFlatL2``), by
HNSW at several ``ef_search`` values (``MemoryBank("hnsw")``, what ``patchcore.index=hnsw``
fits) and by faiss's IVF-Flat (not an index the product offers; shown for comparison). Prints
search ms per image and image AUROC on both splits, with the change from exact search.

    python benchmarks/search.py --model runs/benchmark/elpv/patchcore-openvino-fp32
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np

from anomaly.artifacts.bundle import load_bundle, read_config
from anomaly.components.memory_bank import MemoryBank
from anomaly.components.threads import limited_threads
from anomaly.data import load_dataset
from anomaly.evaluation import metrics
from anomaly.io.images import load_image


def _ivf(bank: np.ndarray, lists: int, probes: int) -> faiss.Index:
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(bank.shape[1]), bank.shape[1], lists)
    index.train(bank)
    index.add(bank)
    index.make_direct_map()  # the image-score re-weighting looks bank vectors up by number
    index.nprobe = probes
    return index


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a fitted PatchCore bundle")
    parser.add_argument("--ef-search", default="16,24,32,64", help="HNSW ef_search values")
    parser.add_argument("--ivf", default="64:4,128:16,256:8,256:16", help="lists:probes,...")
    args = parser.parse_args()
    model = load_bundle(args.model)
    model.progress = False
    dataset = load_dataset(read_config(args.model))
    size = model.batch_size
    features = {}
    for split in ("val", "test"):
        samples = dataset.select(split)
        images = [load_image(sample.path) for sample in samples]
        with limited_threads(model.num_threads):
            batches = [model.runtime_(images[i : i + size]) for i in range(0, len(images), size)]
        features[split] = (batches, np.array([sample.label for sample in samples]))
    bank = model.memory_bank_.all_vectors()
    flat = MemoryBank("flat").fit(bank).index_
    variants = [("exact", flat)]
    for ef in (int(v) for v in args.ef_search.split(",")):
        variants.append((f"HNSW ef {ef}", MemoryBank("hnsw", ef_search=ef).fit(bank).index_))
    for item in args.ivf.split(","):
        lists, probes = (int(v) for v in item.split(":"))
        variants.append((f"IVF {lists} lists, {probes} probed", _ivf(bank, lists, probes)))
    print(f"{args.model}: bank {len(bank)} x {bank.shape[1]}, {model.num_threads or 'all'} threads")
    print("| search | ms/image | val AUROC | change | test AUROC | change |")
    print("| --- | --- | --- | --- | --- | --- |")
    exact = {}
    for name, index in variants:
        model.memory_bank_.index_ = index
        cells = []
        seconds, count = 0.0, 0
        for split, (batches, labels) in features.items():
            scores = []
            for batch in batches:
                with limited_threads(model.num_threads):
                    started = time.perf_counter()
                    scores.append(model._score_features(batch)[0])
                    seconds += time.perf_counter() - started
            count += len(labels)
            auroc = metrics.image_auroc(labels, np.concatenate(scores))
            exact.setdefault(split, auroc)
            cells.append(f"{auroc:.4f} | {auroc - exact[split]:+.4f}")
        print(f"| {name} | {1000 * seconds / count:.1f} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
