"""``anomaly score --engine ray``: the same run directory as local scoring, on a Ray actor pool.

One local Ray (two CPUs) serves the whole module and is shut down at its end; every run here
scores the same small folder (the parts category's test images, plus an empty file and a text
file named like an image) with one bundle fitted once, and is compared with a local run of it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import make_parts_category

from anomaly.artifacts.bundle import load_bundle
from anomaly.commands.cli import main
from anomaly.commands.score import score_paths

FAST = ["image_size=64", "patchcore.coreset_ratio=0.25", "runtime.progress=false"]
BATCH = 8  # 26 inputs: three full batches and a short one, with the unreadable files inside


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray") / "data"
    make_parts_category(root / "parts")
    out = root.parent / "bundle"
    fit = ["fit", "--category", "parts", "--data-root", str(root), "--out", str(out)]
    assert main([*fit, "data.val_fraction=0.5", *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def inputs(bundle: Path) -> Path:
    """The category's test images (OK and NG parts) and two files that cannot be read."""
    folder = bundle.parent / "inputs"
    folder.mkdir()
    for image in sorted((bundle.parent / "data" / "parts" / "test").rglob("*.png")):
        shutil.copy(image, folder / image.name)
    (folder / "good_005b_empty.png").write_bytes(b"")
    (folder / "good_010b_text.png").write_text("not a picture")
    return folder


@pytest.fixture(scope="module")
def local_run(bundle: Path, inputs: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: the same inputs scored in this process, on one thread like an actor."""
    out = tmp_path_factory.mktemp("local") / "run"
    return score_paths(_model(bundle), [inputs], out), out


def _model(bundle: Path, threads: int = 1):
    """The bundle as scored here: one thread, as each actor (one CPU each) runs it."""
    return load_bundle(bundle).set_runtime(batch_size=BATCH, num_threads=threads, progress=False)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}


def _score_command(bundle: Path, inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        "score",
        str(inputs),
        "--model",
        str(bundle),
        "--out",
        str(out),
        f"runtime.batch_size={BATCH}",
        "runtime.num_threads=1",  # as _model: a resumed run must share its settings
        "runtime.progress=false",
        *extra,
    ]


def test_ray_scores_equal_local_to_the_bit_even_when_an_actor_dies(
    ray_cluster, bundle, inputs, local_run, tmp_path, monkeypatch
):
    """One run checks both (each Ray run costs its actors' start-up): an actor dies in its
    first batch, Ray restarts it and retries the batch, and the run is the local one."""
    from anomaly.engines.ray import DIE_ONCE_ENV, RayEngine

    local, local_out = local_run
    marker = tmp_path / "an actor died"
    monkeypatch.setenv(DIE_ONCE_ENV, str(marker))
    out = tmp_path / "ray"
    with RayEngine(bundle, workers=2, batch_size=BATCH) as engine:
        run = score_paths(_model(bundle), [inputs], out, engine=engine)
    assert marker.exists()  # an actor did die in a batch
    # Every image once, in input order, to the last bit of every score.
    assert [r.file for r in run.rows] == [r.file for r in local.rows]
    assert len({r.file for r in run.rows}) == len(run.rows) == 26
    assert run.rows == local.rows
    assert {r.verdict for r in run.rows} == {"OK", "NG", "ERROR"}
    errors = {Path(r.file).name: r.error for r in run.rows if r.verdict == "ERROR"}
    assert sorted(errors) == ["good_005b_empty.png", "good_010b_text.png"]
    assert errors["good_005b_empty.png"] == "empty file (0 bytes)"
    assert (out / "scores.csv").read_bytes() == (local_out / "scores.csv").read_bytes()
    heatmaps = _files(out / "heatmaps")
    assert heatmaps and heatmaps == _files(local_out / "heatmaps")  # names and pixels
    info = json.loads((out / "run.json").read_text())
    assert info["engine"] == {
        "name": "ray",
        "address": None,
        "workers": 2,
        "cpus_per_worker": 1.0,
        "threads_per_worker": 1,
    }
    assert json.loads((local_out / "run.json").read_text())["engine"] == {"name": "local"}
    assert not (out / ".partial").exists() and not (out / ".lock").exists()

    # On another number of threads float32 sums add up in another order: the last bits move.
    other = score_paths(_model(bundle, threads=2), [inputs], tmp_path / "two threads")
    for row, theirs in zip(run.rows, other.rows, strict=True):
        assert (row.verdict, row.heatmap, row.error) == (
            theirs.verdict,
            theirs.heatmap,
            theirs.error,
        )
        if row.score is not None:
            assert row.score == pytest.approx(theirs.score, rel=1e-5)


def test_cli_resumes_a_killed_local_run_on_ray_and_writes_the_report(
    ray_cluster, bundle, inputs, local_run, tmp_path, monkeypatch, capsys
):
    _, local_out = local_run
    out = tmp_path / "run"
    model = _model(bundle)
    scored = model.score_batch
    calls = []

    def dies_in_the_third_batch(images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return scored(images)

    monkeypatch.setattr(model, "score_batch", dies_in_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        score_paths(model, [inputs], out)
    resume = ["--engine", "ray", "--resume", "--report", "engine.workers=1"]  # 10 images left
    command = _score_command(bundle, inputs, out, *resume)
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "resumed: 16 rows kept" in printed
    assert (out / "scores.csv").read_bytes() == (local_out / "scores.csv").read_bytes()
    assert _files(out / "heatmaps") == _files(local_out / "heatmaps")
    info = json.loads((out / "run.json").read_text())
    assert info["engine"]["name"] == "ray" and info["resumed_rows"] == 16
    assert (out / "report.html").is_file()


def test_without_ray_the_error_names_the_extra(bundle, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if `import ray` found nothing
    out = tmp_path / "run"
    assert main(_score_command(bundle, inputs, out, "--engine", "ray")) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert "pip install 'anomaly[ray]'" in message
    assert not out.exists()  # refused before any work


def test_an_unknown_engine_is_refused(bundle, inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_score_command(bundle, inputs, out, "engine.name=spark")) == 2
    assert "engine.name='spark': must be local or ray" in capsys.readouterr().err


def test_engine_flags_are_config_keys(bundle, inputs, tmp_path, monkeypatch, capsys):
    import anomaly.engines.ray as ray_engine
    from anomaly.errors import ConfigError

    given = {}

    def engine(bundle_dir, **settings):
        given.update(settings, bundle_dir=bundle_dir)
        raise ConfigError("seen")

    monkeypatch.setattr(ray_engine, "RayEngine", engine)
    flags = ["--engine", "ray", "--ray-address", "auto", "engine.workers=3"]
    assert main(_score_command(bundle, inputs, tmp_path / "run", *flags)) == 2
    assert (given["address"], given["workers"], given["batch_size"]) == ("auto", 3, BATCH)
    assert given["bundle_dir"] == str(bundle)


def test_a_pool_without_workers_is_refused(bundle, inputs, tmp_path, capsys):
    pytest.importorskip("ray.data")
    command = _score_command(bundle, inputs, tmp_path / "run", "--engine", "ray")
    assert main([*command, "engine.workers=0"]) == 2
    assert "engine.workers=0: must be at least 1" in capsys.readouterr().err


def test_a_ray_failure_is_told_in_one_line_with_its_remote_cause():
    from anomaly.engines.ray import ray_error_reason

    message = (
        "The actor died because of an error raised in its creation task, \x1b[36mray::MapWorker"
        "(MapBatches(BundleScorer)).__init__()\x1b[39m (pid=3910)\n"
        '  File "anomaly/artifacts/bundle.py", line 190, in load_bundle\n'
        '    raise BundleError("...")\n'
        "anomaly.errors.BundleError: /tmp/b/model.safetensors: checksum mismatch\n"
    )
    reason = ray_error_reason(RuntimeError(message))
    assert reason == "anomaly.errors.BundleError: /tmp/b/model.safetensors: checksum mismatch"
    assert ray_error_reason(RuntimeError("\n  lost the node\n")) == "lost the node"
