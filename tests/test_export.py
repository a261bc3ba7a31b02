"""``anomaly export``: an exported bundle scores like its PyTorch source, through the same code
after the features, and without importing torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_parts_category

from anomaly.artifacts.bundle import load_bundle
from anomaly.commands.cli import main

FAST = ["image_size=64", "patchcore.coreset_ratio=0.25", "padim.n_features=40"]
QUIET = ["runtime.progress=false"]
FORMATS = [("onnx", "fp32", "onnxruntime"), ("openvino", "fp32", "openvino")]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """PatchCore and PaDiM fitted on the textured parts, and each exported both ways."""
    root = tmp_path_factory.mktemp("export")
    make_parts_category(root / "data" / "parts")
    made = {}
    for model in ("patchcore", "padim"):
        out = root / model
        fit = ["fit", "--category", "parts", "--data-root", str(root / "data"), "--model", model]
        assert main([*fit, "--out", str(out), "data.val_fraction=0.5", *FAST, *QUIET]) == 0
        made[model] = out
        for fmt, precision, engine in FORMATS:
            exported = root / f"{model}-{engine}"
            command = ["export", "--model", str(out), "--format", fmt, "--out", str(exported)]
            assert main([*command, "--precision", precision, *QUIET]) == 0
            made[f"{model}-{engine}"] = exported
    return made


def _scores(bundle: Path, out: Path) -> dict[str, dict[str, str]]:
    assert (
        main(["score", "--split", "test", "--model", str(bundle), "--out", str(out), *QUIET]) == 0
    )
    with (out / "scores.csv").open() as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("model", ["patchcore", "padim"])
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_exported_scores_match_torch_within_1e4_with_identical_verdicts(
    bundles, model, engine, tmp_path
):
    torch_rows = _scores(bundles[model], tmp_path / "torch")
    exported_rows = _scores(bundles[f"{model}-{engine}"], tmp_path / engine)
    assert torch_rows.keys() == exported_rows.keys()
    reference = np.array([float(torch_rows[f]["score"]) for f in torch_rows])
    exported = np.array([float(exported_rows[f]["score"]) for f in torch_rows])
    np.testing.assert_allclose(exported, reference, rtol=1e-4)
    assert [torch_rows[f]["verdict"] for f in torch_rows] == [
        exported_rows[f]["verdict"] for f in torch_rows
    ]
    # The same pixel scale too: the heatmaps of rejected parts are the same files.
    assert [torch_rows[f]["heatmap"] != "" for f in torch_rows] == [
        exported_rows[f]["heatmap"] != "" for f in torch_rows
    ]


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_the_bundle_records_engine_precision_and_parity(bundles, engine):
    bundle = bundles[f"patchcore-{engine}"]
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert metadata["runtime"]["engine"] == engine
    assert metadata["runtime"]["precision"] == "fp32"
    for name in metadata["runtime"]["files"]:
        assert name in metadata["files"]  # checksummed like every bundle file
    record = metadata["export"]
    assert record["verdict_flips"] == 0 and record["max_relative_difference"] < 1e-4
    assert record["n_images"] > 0
    model = load_bundle(bundle)
    assert model.runtime_.engine == engine
    assert "exported to" in model.initialisation()


def test_a_torch_bundle_records_the_torch_runtime(bundles):
    metadata = json.loads((bundles["patchcore"] / "metadata.json").read_text())
    assert metadata["runtime"] == {"engine": "torch"}


SCORE_WITHOUT_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "timm"}:
                raise ImportError("blocked for the test: " + name)

    sys.meta_path.insert(0, NoTorch())
    from anomaly.commands.cli import main

    code = main(["score", "--split", "test", "--model", sys.argv[1], "--out", sys.argv[2],
                 "--report", "runtime.progress=false"])
    fitting_only = {"torch", "timm", "sklearn", "scipy", "matplotlib", "joblib", "onnx"}
    print("IMPORTED", sorted({m.split(".")[0] for m in sys.modules} & fitting_only))
    sys.exit(code)
    """
)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_scoring_an_exported_bundle_needs_no_fitting_library(bundles, engine, tmp_path):
    """What the [edge] install lacks (torch, timm, scikit-learn, scipy, matplotlib) is never
    imported, and importing torch would fail: the scorer runs without it."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCORE_WITHOUT_TORCH,
            str(bundles[f"patchcore-{engine}"]),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED []" in result.stdout
    assert (tmp_path / "run" / "report.html").is_file()


def test_a_torch_bundle_without_torch_says_which_install_it_needs(bundles, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCORE_WITHOUT_TORCH,
            str(bundles["patchcore"]),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "anomaly[fit]" in result.stderr and "anomaly export" in result.stderr


def test_an_exported_bundle_refuses_what_needs_the_torch_model(bundles, tmp_path, capsys):
    exported = bundles["patchcore-onnxruntime"]
    good = sorted((exported.parent / "data" / "parts" / "train" / "good").iterdir())[:1]
    code = main(["add", str(good[0]), "--model", str(exported), "--out", str(tmp_path / "b")])
    assert code == 2
    assert "needs the PyTorch model" in capsys.readouterr().err
    code = main(["export", "--model", str(exported), "--out", str(tmp_path / "again"), *QUIET])
    assert code == 2
    assert "already exported" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--format", "onnx", "--precision", "bf16"], "precision 'bf16' with onnxruntime"),
        (["format=tflite"], "format 'tflite'"),
    ],
)
def test_bad_export_settings_are_refused_with_the_value(
    bundles, tmp_path, capsys, arguments, message
):
    code = main(
        [
            "export",
            "--model",
            str(bundles["patchcore"]),
            "--out",
            str(tmp_path / "x"),
            *arguments,
            *QUIET,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_changed_graph_file_is_refused_at_load(bundles, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundles["patchcore-onnxruntime"], copy)
    graph = copy / "features.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    from anomaly.errors import BundleError

    with pytest.raises(BundleError, match=r"features\.onnx"):
        load_bundle(copy)


def test_int8_export_quantises_the_graph_and_states_what_it_costs(bundles, tmp_path, capsys):
    import onnx

    out = tmp_path / "int8"
    command = ["export", "--model", str(bundles["patchcore"]), "--precision", "int8"]
    # --force: on 64-pixel toy parts int8 may cost false alarms; what it costs is printed and
    # recorded either way, which is what this test checks.
    assert main([*command, "--out", str(out), "--force", *QUIET]) == 0
    text = capsys.readouterr().out
    assert "validation AUROC" in text and "false alarms" in text
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["runtime"]["precision"] == "int8"
    assert metadata["export"]["int8_calibration_images"] == 12  # the good train images
    graph = onnx.load(str(out / "features.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    # 7-bit weights (export.quantize says why): at most 64 in absolute value.
    weights = [
        onnx.numpy_helper.to_array(tensor)
        for tensor in graph.initializer
        if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) == 4
    ]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64  # 8 bits: to 127
    run = ["score", "--split", "test", "--model", str(out), "--out", str(tmp_path / "run")]
    assert main([*run, *QUIET]) == 0


class _Scrambled:
    """An exported runtime whose features are noise: a graph that scores worse."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.rng = np.random.default_rng(0)

    def __call__(self, images):
        outputs = self.runtime(images)
        patches = outputs["patches"]
        outputs["patches"] = self.rng.normal(0, 1, patches.shape).astype(patches.dtype)
        return outputs

    def __getattr__(self, name):
        return getattr(self.runtime, name)


def test_an_export_that_scores_worse_is_refused_and_nothing_is_saved(
    bundles, tmp_path, monkeypatch, capsys
):
    import anomaly.runtime.export as export_module

    real = export_module.export_features
    monkeypatch.setattr(export_module, "export_features", lambda *a, **k: _Scrambled(real(*a, **k)))
    out = tmp_path / "worse"
    assert main(["export", "--model", str(bundles["patchcore"]), "--out", str(out), *QUIET]) == 2
    error = capsys.readouterr().err
    assert "nothing saved" in error and ("false-alarm rate" in error or "miss rate" in error)
    assert not out.exists()


def test_evaluate_takes_exported_bundles_next_to_their_source(bundles, tmp_path, capsys):
    models = [bundles["patchcore"], bundles["patchcore-onnxruntime"], bundles["padim-openvino"]]
    command = ["evaluate", *[a for m in models for a in ("--model", str(m))]]
    assert main([*command, "--out", str(tmp_path / "eval"), "--no-plots", *QUIET]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert len(report["models"]) == 3


def test_the_edge_install_scores_an_exported_bundle_without_torch(bundles, tmp_path):
    """``pip install .[edge]`` into a fresh virtual environment: no fitting-only package comes
    in, and its ``anomaly score`` scores an exported bundle. Prints the install's size and the
    scorer's peak RSS (figures, not asserted: benchmarks/edge_install.py measures them on ELPV)."""
    import venv

    repository = Path(__file__).resolve().parents[1]
    environment = tmp_path / "edge"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{repository}[edge]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    site = next((environment / "lib").glob("python*/site-packages"))
    fitting_only = ["torch", "timm", "torchvision", "sklearn", "scipy", "matplotlib", "onnx"]
    assert [name for name in fitting_only if (site / name).exists()] == []
    probe = (
        "import sys; from pathlib import Path; from anomaly.commands.cli import main; "
        "code = main(sys.argv[1:]); "
        "print([l for l in Path('/proc/self/status').read_text().splitlines() "
        "if l.startswith('VmHWM')][0]); sys.exit(code)"
    )
    images = bundles["patchcore"].parent / "data" / "parts" / "test"
    result = subprocess.run(
        [
            str(python),
            "-c",
            probe,
            "score",
            str(images),
            "--model",
            str(bundles["patchcore-onnxruntime"]),
            "--out",
            str(tmp_path / "run"),
            "runtime.progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "scores.csv").is_file()
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20
    print(f"edge install {size:.0f} MB; scoring: {result.stdout.strip().splitlines()[-1]}")


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_the_thread_setting_reaches_the_exported_engine(bundles, engine):
    """``runtime.num_threads`` at scoring time limits the engine too, not only faiss and BLAS:
    a line PC that keeps a core free for its camera must get what it asked for."""
    model = load_bundle(bundles[f"patchcore-{engine}"]).set_runtime(num_threads=1)
    runtime = model.runtime_
    if engine == "onnxruntime":
        assert runtime.session.get_session_options().intra_op_num_threads == 1
    else:
        assert int(runtime.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert model.predict([np.zeros((64, 64, 3), np.uint8)]).scores.shape == (1,)
