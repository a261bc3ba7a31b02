"""Command-line interface: a few lines per command over the library API.

Every flag is a config key (``--category`` is ``data.category``, ``--out`` is ``out`` ...), and
any other key can be set as ``key=value``; ``--config FILE`` merges a YAML file first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly import __version__
from anomaly.errors import AnomalyError

if TYPE_CHECKING:  # the CLI imports what a command needs only when it runs (fast --help)
    from omegaconf import DictConfig


logger = logging.getLogger("anomaly")

#: Exit codes: done; nothing could be scored; bad config, data, model or bundle; I/O failure
#: (read-only or full disk, missing permission), printed as one line with the path and reason.
EXIT_OK, EXIT_NOTHING_SCORED, EXIT_ERROR, EXIT_IO = 0, 1, 2, 3
#: Modules only the ``[fit]`` extra installs.
FIT_MODULES = frozenset(
    {"torch", "torchvision", "timm", "sklearn", "scipy", "joblib", "matplotlib", "onnx"}
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides and score's paths may come before or after flags.
    args, extra = parser.parse_known_args(argv)
    _route_extra(parser, args, extra)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.INFO
        if not args.quiet
        else logging.WARNING,
        format="%(message)s",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader chatters at INFO
    try:
        return args.handler(args)
    except AnomalyError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as error:
        # The [edge] install scores exported bundles; every other command needs [fit].
        if (error.name or "").split(".")[0] not in FIT_MODULES:
            raise
        print(
            f"error: {error.name} is not installed: `anomaly {args.command}` needs the fitting "
            "install: pip install 'anomaly[fit]' (the [edge] install scores bundles made by "
            "`anomaly export`)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except OSError as error:  # the disk or the file system said no: not a traceback
        where = error.filename or "?"
        print(f"error: {where}: {error.strerror or error}", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _config(schema: type, args: argparse.Namespace, flags: dict[str, Any]) -> DictConfig:
    """The command's config: defaults < ``--config`` file < ``key=value`` < named flags
    (``flags`` maps a dotted config key to its flag's value, ``None`` when not given)."""
    from anomaly.config import build_config

    return build_config(schema, args.config, args.overrides, **flags)


def _fit(args: argparse.Namespace) -> int:
    from anomaly.commands.fit import fit_category
    from anomaly.config import FitConfig

    config = _config(
        FitConfig,
        args,
        {
            "data.category": args.category,
            "model": args.model,
            "data.root": args.data_root,
            "out": args.out,
            "engine.name": args.engine,
            "engine.address": args.ray_address,
        },
    )
    print(fit_category(config).text())
    return EXIT_OK


def _score(args: argparse.Namespace) -> int:
    from anomaly.commands.score import score
    from anomaly.config import ScoreConfig

    config = _config(
        ScoreConfig,
        args,
        {
            "paths": args.paths or None,
            "model": args.model,
            "out": args.out,
            "split": args.split,
            "report": args.report or None,
            "heatmaps": False if args.no_heatmaps else None,
            "require_signature": args.require_signature,
            "resume": args.resume or None,
            "engine.name": args.engine,
            "engine.address": args.ray_address,
        },
    )
    run = score(config)
    print(run.summary())
    if run.report is not None:
        print(f"report: {run.report}")
    return EXIT_OK if run.n_scored else EXIT_NOTHING_SCORED


def _keygen(args: argparse.Namespace) -> int:
    from anomaly.artifacts.signing import generate_key

    private, public = generate_key(args.key)
    print(f"private key: {private} (keep it; sign with `anomaly sign --key {private}`)")
    print(f"public key:  {public} (for `anomaly score --require-signature {public}`)")
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    from anomaly.artifacts.bundle import sign_bundle

    print(f"signed: {sign_bundle(args.model, args.key)}")
    return EXIT_OK


def _add(args: argparse.Namespace) -> int:
    from anomaly.commands.fit import add_good_images
    from anomaly.config import AddConfig

    config = _config(
        AddConfig, args, {"paths": args.paths or None, "model": args.model, "out": args.out}
    )
    if not config.paths:
        raise AnomalyError("nothing to add: give good image files or folders")
    result, skipped = add_good_images(config.model, list(config.paths), config.out, config.runtime)
    print(result.text())
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from anomaly.commands.export import export_bundle
    from anomaly.config import ExportConfig

    config = _config(
        ExportConfig,
        args,
        {
            "model": args.model,
            "format": args.format,
            "precision": args.precision,
            "out": args.out,
            "force": args.force or None,
        },
    )
    print(export_bundle(config).text())
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from anomaly.commands.evaluate import evaluate
    from anomaly.config import EvaluateConfig

    config = _config(
        EvaluateConfig,
        args,
        {
            "models": args.models,
            "split": args.split,
            "category": args.category,
            "data_root": args.data_root,
            "out": args.out,
            "plots": False if args.no_plots else None,
        },
    )
    print(evaluate(config).text())
    return EXIT_OK


def _categories(args: argparse.Namespace) -> int:
    from anomaly.data import list_categories

    categories = list_categories(args.data_root)
    if args.json:
        print(json.dumps(categories, indent=2))
        return EXIT_OK
    for entry in categories:
        print(f"{entry['name']:<20} {entry['source']:<12} {entry.get('description', '')}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from anomaly.report import write_report

    print(f"report: {write_report(Path(args.run_dir))}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from anomaly.commands.compare import compare_category
    from anomaly.config import CompareConfig

    models = None if args.models is None else [m.strip() for m in args.models.split(",") if m]
    config = _config(
        CompareConfig,
        args,
        {
            "data.category": args.category,
            "data.root": args.data_root,
            "out": args.out,
            "models": models,
            "learning_curve": args.learning_curve or None,
            "refit": args.refit or None,
        },
    )
    print(compare_category(config).text())
    return EXIT_OK


def _engine_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """``--engine`` and ``--ray-address`` (``engine.name``, ``engine.address``) of a command
    whose ``work`` can run on Ray."""
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        help=f"where to {work} (engine.name): local (default, this process) or ray (a Ray "
        "cluster; needs pip install 'anomaly[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help=f"Ray cluster to {work.split(' (')[0]} on (engine.address): auto, "
        "ray://HOST:10001; default: start a local Ray",
    )


def _parser() -> argparse.ArgumentParser:
    from anomaly.config import EvaluateConfig
    from anomaly.evaluation.tables import confidence_text

    parser = argparse.ArgumentParser(
        prog="anomaly",
        description="Unsupervised visual inspection: fit on good parts, score new ones.",
    )
    parser.add_argument("--version", action="version", version=f"anomaly {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser(
        "fit",
        formatter_class=_ModelNamesFormatter,
        help="fit, calibrate and save a model for a category",
        description="Fit a model on a category's good training images, calibrate its threshold "
        "to a target miss rate on the validation split, report test figures, save the bundle.",
        epilog="Any config key can be set as key=value, e.g. patchcore.coreset_ratio=0.05 "
        "calibration.target_miss_rate=0.02 image_size=320 runtime.num_threads=2. "
        "See configs/default.yaml for every key.",
    )
    fit.add_argument("--category", help="category name (data.category), e.g. sealant, elpv")
    fit.add_argument("--model", help=f"model (model): {_MODEL_NAMES}; default patchcore")
    fit.add_argument(
        "--data-root", help="folder of categories in MVTec AD or folder layout (data.root)"
    )
    fit.add_argument("--out", help="bundle directory (out); default runs/<category>/<model>")
    _engine_arguments(fit, "extract features (patchcore, padim)")
    _config_arguments(fit, _fit)

    score = commands.add_parser(
        "score",
        help="score image files/folders: CSV, heatmaps of rejected parts",
        description="Score images with a fitted model. Writes scores.csv (file, score, "
        "normalized_score, verdict OK/NG/ERROR, heatmap, error), a heatmap overlay for every "
        "rejected part and run.json. Bad files are recorded and skipped. Exit codes: 0 done, 1 "
        "nothing could be scored, 2 a bad setting, model or bundle, 3 the disk or file system "
        "refused.",
    )
    _paths_argument(score, "image files or folders")
    score.add_argument("--model", help="model bundle directory (model)")
    score.add_argument("--out", help="run directory (out); default runs/score-<time>")
    score.add_argument(
        "--split",
        help="score the model's own dataset split (split), with ground truth: train, val or test",
    )
    score.add_argument("--report", action="store_true", help="also write report.html (report)")
    score.add_argument("--no-heatmaps", action="store_true", help="no overlay PNGs (heatmaps)")
    score.add_argument(
        "--resume",
        action="store_true",
        help="continue a run into --out that was killed, scoring only what it had not (resume)",
    )
    _engine_arguments(score, "score")
    score.add_argument(
        "--require-signature",
        metavar="PUBLIC_KEY",
        help="refuse a bundle not signed with this key's private half (require_signature)",
    )
    _config_arguments(score, _score, overrides=False)

    add = commands.add_parser(
        "add",
        help="add good images to a fitted PatchCore model without refitting",
        description="Add good images to a PatchCore bundle's memory bank (the coreset share of "
        "their patches least like those already kept), then recalibrate on the model's "
        "validation split, re-test and save. Images that are validation or test images of the "
        "model are refused; unreadable files are skipped and listed. The replaced bundle is "
        "kept in <out>.previous.",
    )
    _paths_argument(add, "good image files or folders")
    add.add_argument("--model", help="PatchCore bundle directory (model)")
    add.add_argument("--out", help="where to save (out); default the model's own directory")
    _config_arguments(add, _add, overrides=False)

    export = commands.add_parser(
        "export",
        help="a copy of a bundle that scores through ONNX Runtime or OpenVINO (no torch needed)",
        description="Trace the model's feature graph (normalisation, backbone, pooling) to ONNX "
        "or OpenVINO, calibrate it on the bundle's validation split and check it against "
        "PyTorch there (largest score difference, verdicts, AUROC, miss and false-alarm rates), "
        "then save a bundle that scores with it. Search, maps, calibration and verdicts stay the "
        "same code. Refuses to save when the exported model misses more validation defects or "
        "its false-alarm rate rises by more than max_false_alarm_increase, unless --force.",
    )
    export.add_argument("--model", help="bundle directory to export (model)")
    export.add_argument("--format", choices=["onnx", "openvino"], help="format: onnx (default)")
    export.add_argument(
        "--precision",
        choices=["fp32", "int8", "bf16", "fp16"],
        help="inference precision (precision): fp32 (default), int8 (quantised on good train "
        "images); openvino also bf16, fp16",
    )
    export.add_argument("--out", help="exported bundle directory (out)")
    export.add_argument(
        "--force", action="store_true", help="save even if the exported model scores worse (force)"
    )
    _config_arguments(export, _export)

    # The help quotes the default level; confidence=0.99 sets another, which the tables state.
    default_confidence = confidence_text(EvaluateConfig.confidence)
    evaluate = commands.add_parser(
        "evaluate",
        help="every metric of one or several bundles on one labelled split",
        description="Score bundles on a labelled split (default: the first bundle's own test "
        "split) and report image AUROC, AP, F1-max, miss and false-alarm rates at the "
        "calibrated threshold with Clopper-Pearson intervals at the confidence setting "
        f"(confidence=..., default {default_confidence}), trade-offs, pixel AUROC/AUPRO, "
        "per-defect-type results, latency and model size. Writes evaluation.json, "
        "evaluation.txt and PNG plots.",
    )
    evaluate.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="DIR",
        help="model bundle directory (models); repeat to compare several",
    )
    evaluate.add_argument("--split", help="split to evaluate on (split): test (default), val")
    evaluate.add_argument(
        "--category",
        help="evaluate on this category's split instead of the first bundle's own (category)",
    )
    evaluate.add_argument("--data-root", help="folder of categories for --category (data_root)")
    evaluate.add_argument("--out", help="output folder (out); default runs/evaluate-<time>")
    evaluate.add_argument("--no-plots", action="store_true", help="no PNG plots (plots)")
    _config_arguments(evaluate, _evaluate)

    compare = commands.add_parser(
        "compare",
        help="PatchCore, PaDiM, the hybrid and the supervised baseline on one split, one table",
        description="Fit (or reuse bundles under runs/<category>/<model> fitted on the same split "
        "with the same config) every model, calibrate each on the same validation images and "
        "score the same test images. Prints one table (AUROC, miss and false-alarm rates at the "
        "calibrated threshold and at 0/1/5% miss rate, pixel AUROC/AUPRO, fit time, ms/image, "
        "size, labelled defects used) and writes compare.json, compare.csv, scores.csv, roc.png.",
        epilog="Any fit key applies, e.g. baseline.network=efficientnet_lite0 "
        "patchcore.coreset_ratio=0.05 runtime.num_threads=2.",
    )
    compare.add_argument("--category", help="category name (data.category), e.g. elpv, sealant")
    compare.add_argument("--data-root", help="folder of categories (data.root)")
    compare.add_argument(
        "--models", help="comma-separated models (models); default patchcore,padim,hybrid,baseline"
    )
    compare.add_argument("--out", help="output folder (out); default runs/<category>/compare")
    compare.add_argument(
        "--learning-curve",
        action="store_true",
        help="also train every model that learns from labels (hybrid, baseline) on 5, 10, 25, "
        "50 and all train defects (learning_curve)",
    )
    compare.add_argument(
        "--refit", action="store_true", help="fit even when a matching bundle exists (refit)"
    )
    _config_arguments(compare, _compare)

    categories = commands.add_parser("categories", help="list built-in and found categories")
    categories.add_argument("--data-root", help="folder of categories to look in")
    categories.add_argument("--json", action="store_true", help="machine-readable output")
    categories.set_defaults(handler=_categories, overrides=[])

    keygen = commands.add_parser(
        "keygen",
        help="make an Ed25519 key pair to sign bundles with",
        description="Write a new private key to KEY (readable by you only) and its public key "
        "to KEY.pub. Keep KEY where models are made; copy KEY.pub to the line PCs.",
    )
    keygen.add_argument("key", metavar="KEY", help="private key file to create")
    keygen.set_defaults(handler=_keygen, overrides=[])

    sign = commands.add_parser(
        "sign",
        help="sign a bundle, so line PCs can require it (score --require-signature)",
        description="Sign a verified bundle with a private key from `anomaly keygen`: "
        "signature.json in the bundle covers every file of it.",
    )
    sign.add_argument("--model", required=True, help="model bundle directory")
    sign.add_argument("--key", required=True, help="private key file")
    sign.set_defaults(handler=_sign, overrides=[])

    report = commands.add_parser("report", help="write report.html for a scoring run")
    report.add_argument("run_dir", help="run directory written by `anomaly score`")
    report.set_defaults(handler=_report, overrides=[])
    return parser


#: Stands in the help for the registered model names, filled in only when help is shown:
#: listing them imports the model registry, which imports torch (seconds), and no command but
#: ``--help`` should pay for that before it runs.
_MODEL_NAMES = "{model names}"


class _ModelNamesFormatter(argparse.HelpFormatter):
    """Help formatter that writes the registered model names (built-in and plug-ins) in place
    of :data:`_MODEL_NAMES`."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text is None or _MODEL_NAMES not in text:
            return text
        from anomaly.models import model_names

        # Escaped: argparse %-formats help strings after this.
        return text.replace(_MODEL_NAMES, ", ".join(model_names()).replace("%", "%%"))


def _config_arguments(
    command: argparse.ArgumentParser,
    handler: Callable[[argparse.Namespace], int],
    overrides: bool = True,
) -> None:
    """``--config FILE`` and ``key=value`` overrides; a command that takes paths
    (``overrides=False``) finds its overrides among them (:func:`_route_extra`)."""
    command.add_argument("--config", help="YAML config file merged before overrides")
    if overrides:
        command.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        command.set_defaults(handler=handler)
    else:
        command.set_defaults(handler=handler, overrides=[])


def _paths_argument(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"{what} (searched recursively); key=value overrides may follow",
    )


def _route_extra(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]
) -> None:
    """Sort positional leftovers into ``key=value`` overrides and (for ``score``) paths."""
    positional = list(getattr(args, "paths", None) or []) + list(
        getattr(args, "overrides", None) or []
    )
    unknown_flags = [item for item in extra if item.startswith("-")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    items = positional + extra
    args.overrides = [item for item in items if "=" in item and not Path(item).exists()]
    leftovers = [item for item in items if item not in args.overrides]
    if hasattr(args, "paths"):
        args.paths = leftovers
    elif leftovers:
        parser.error(f"unrecognized arguments: {' '.join(leftovers)} (overrides are key=value)")


if __name__ == "__main__":
    sys.exit(main())
