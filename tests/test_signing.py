"""Signed bundles: a forger who recomputes the checksums is still refused."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import make_parts_category, save_image

from anomaly.artifacts import bundle as bundle_module
from anomaly.artifacts.bundle import load_bundle, save_bundle, sign_bundle
from anomaly.artifacts.signing import generate_key, verify_bundle
from anomaly.commands.cli import main
from anomaly.errors import BundleError, ConfigError
from anomaly.models.patchcore import PatchCore


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    base = tmp_path_factory.mktemp("signing")
    root = make_parts_category(base / "parts", n_train=6)
    images = sorted((root / "train" / "good").glob("*.png"))
    model = PatchCore(image_size=64, coreset_ratio=0.5, progress=False, num_threads=1).fit(images)
    model.calibrate_from_scores(np.array([1.0, 1.1, 1.2]), np.array([0, 0, 1]), np.ones(3))
    path = save_bundle(model, base / "bundle")
    private, public = generate_key(base / "keys" / "line")
    sign_bundle(path, private)
    return path, private, public, base


def _copy(path: Path, to: Path) -> Path:
    return Path(shutil.copytree(path, to))


def test_keys_are_made_once_and_the_private_one_is_private(signed) -> None:
    _, private, public, _ = signed
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.name == "line.pub" and b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_key(private)


def test_a_signed_bundle_loads_when_its_signature_is_required(signed) -> None:
    path, _, public, _ = signed
    model = load_bundle(path, require_signature=public)
    assert model.threshold_ is not None


def test_a_forged_threshold_passes_the_checksums_but_not_the_signature(signed, tmp_path) -> None:
    path, _, public, _ = signed
    forged = _copy(path, tmp_path / "forged")
    metadata = json.loads((forged / "metadata.json").read_text())
    metadata["calibration"]["threshold"] = 1e9  # every part would pass
    metadata["checksum"] = bundle_module._metadata_checksum(metadata)  # as a forger would
    (forged / "metadata.json").write_text(json.dumps(metadata))
    assert load_bundle(forged).threshold_ == 1e9  # the checksums cannot tell
    with pytest.raises(BundleError, match="changed after it was signed"):
        load_bundle(forged, require_signature=public)


def test_unsigned_and_other_signers_are_refused(signed, tmp_path) -> None:
    path, _, public, base = signed
    unsigned = _copy(path, tmp_path / "unsigned")
    (unsigned / "signature.json").unlink()
    load_bundle(unsigned)  # fine when no signature is asked for
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(unsigned, require_signature=public)
    other_private, _ = generate_key(tmp_path / "someone")
    resigned = _copy(path, tmp_path / "resigned")
    sign_bundle(resigned, other_private)
    with pytest.raises(BundleError, match=r"signed with key [0-9a-f]{16}, not with the required"):
        load_bundle(resigned, require_signature=public)
    with pytest.raises(ConfigError, match="not a readable public key"):
        verify_bundle(path, base / "parts" / "train" / "good" / "good_000.png")


def test_the_command_line_signs_and_requires(signed, tmp_path, capsys) -> None:
    path, _, _, _ = signed
    work = _copy(path, tmp_path / "bundle")
    (work / "signature.json").unlink()
    key = tmp_path / "keys" / "plant"
    assert main(["keygen", str(key)]) == 0
    image = save_image(tmp_path / "in" / "a.png", np.full((64, 64, 3), 120, np.uint8))
    score = ["score", str(image), "--model", str(work), "runtime.progress=false"]
    require = ["--require-signature", f"{key}.pub"]
    assert main([*score, "--out", str(tmp_path / "r1"), *require]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["sign", "--model", str(work), "--key", str(key)]) == 0
    assert main([*score, "--out", str(tmp_path / "r2"), *require]) == 0
