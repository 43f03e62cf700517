"""The `spine-hf` command: parse arguments, call the library, print a report. Nothing else."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from spine_hf import setup_logging
from spine_hf.config import BACKENDS, PREDICT_PRECISIONS
from spine_hf.grades import GRADE_NAMES, NUM_GRADES

EXIT_OK, EXIT_PROBLEMS = 0, 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not crash a report
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv[:1] == ["app"]:
        from spine_hf.app.demo import main as app_main

        app_main(argv[1:])
        return EXIT_OK
    if argv[:1] == ["train"]:
        # Training has its own strict config parser (draccus): hand it everything after `train`.
        from spine_hf.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["cv"]:  # cross-validation takes the training configuration too
        from spine_hf.cv import main as cv_main

        return cv_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_PROBLEMS
    if args.handler in (_evaluate, _calibrate, _predict, _push, _export):
        # transformers' "Loading weights" bars would mix with the output. It takes this setting from
        # huggingface_hub when it is imported, so nothing has to import it here (predict may not need it).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # already imported (a caller in the same process): tell it directly
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        return args.handler(args)
    except (ValueError, OSError, RuntimeError) as err:
        # Library errors already name the file and the fix: show them without a traceback.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PROBLEMS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spine-hf", description="Grade spine radiographs with Hugging Face tools.")
    commands = parser.add_subparsers(title="commands")
    commands.add_parser("app", help="the Gradio demo: spine-hf app --model DIR [--port 7860]", add_help=False)
    commands.add_parser(
        "train",
        help="train a model: spine-hf train --config_path configs/quickstart.yaml [--optim.lr=3e-4 ...]",
        add_help=False,
    )
    commands.add_parser(
        "cv",
        help="K-fold cross-validation by patient, out-of-fold metrics and a fold ensemble: spine-hf cv "
        "--config_path FILE --folds 5 [--seed S] [--fold K] [--section.key=value ...]",
        add_help=False,
    )
    data = commands.add_parser("data", help="check, organise, split and convert image folders")
    data_commands = data.add_subparsers(title="data commands")

    init = data_commands.add_parser("init", help="create train|val|test/grade_0..grade_4")
    init.add_argument("dir")
    init.set_defaults(handler=_init)

    organize = data_commands.add_parser("organize", help="sort a flat pool into grade folders from a CSV")
    organize.add_argument("--images", required=True, help="folder holding the images")
    organize.add_argument("--labels", required=True, help="CSV: file,grade[,patient_id]; grades 0-4 or names")
    organize.add_argument("--out", required=True, help="pool to write: OUT/grade_N/")
    organize.add_argument("--move", action="store_true", help="move the files instead of copying them")
    organize.set_defaults(handler=_organize)

    split = data_commands.add_parser("split", help="stratified, patient-grouped train/val/test split")
    split.add_argument("source", help="pool of grade folders")
    split.add_argument("out", help="new folder for OUT/{train,val,test}/grade_N")
    split.add_argument("--ratios", default="0.7,0.15,0.15", help="train,val,test fractions (default 0.7,0.15,0.15)")
    split.add_argument("--seed", type=int, default=42)
    group = split.add_mutually_exclusive_group()
    group.add_argument("--group-regex", help=r"patient id from the file name, e.g. '^(\d+)'")
    group.add_argument("--groups", help="CSV with file and patient_id columns (default: SOURCE/patients.csv)")
    split.add_argument("--move", action="store_true", help="move the files instead of copying them")
    split.set_defaults(handler=_split)

    verify = data_commands.add_parser("verify", help="check a dataset folder; exit 1 on errors")
    verify.add_argument("dir")
    verify.add_argument("--json", help="also write the report as JSON to this file")
    verify.add_argument("--group-regex", help="patient id from the file name, to check patient leakage")
    verify.add_argument("--max-listed", type=int, default=30, help="problems printed per severity (default 30)")
    verify.set_defaults(handler=_verify)

    convert = data_commands.add_parser("convert", help="split tree -> datasets.DatasetDict on disk")
    convert.add_argument("dir")
    convert.add_argument("out")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT once the new dataset is complete")
    convert.add_argument("--push-to-hub", metavar="REPO", help="also push the dataset to this Hub repo")
    convert.add_argument("--public", action="store_true", help="create the Hub repo as public (default private)")
    convert.add_argument("--group-regex",
                         help=r"patient id from the file name, e.g. '^(\d+)' (default: DIR/patients.csv)")  # fmt: skip
    convert.set_defaults(handler=_convert)

    audit = data_commands.add_parser(
        "audit", help="rank the images whose grade the out-of-fold predictions of `cv` contradict; changes nothing"
    )
    audit.add_argument("cv", help="a `spine-hf cv` folder whose folds are all done")
    audit.add_argument("--data", help="the converted dataset of the images (default: the one the cv used)")
    audit.add_argument("--out", help="folder for audit.csv and audit.html (default: CV/audit)")
    audit.add_argument("--show", type=int, default=100, help="images on the contact sheet (default 100)")
    audit.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    audit.set_defaults(handler=_audit)

    phantoms = data_commands.add_parser("phantoms", help="synthetic spine radiographs of every grade")
    phantoms.add_argument("out")
    phantoms.add_argument("--per-grade", type=int, default=40)
    phantoms.add_argument("--seed", type=int, default=0)
    phantoms.add_argument("--view", choices=["lateral", "ap"], default="lateral",
                          help="lateral lumbar views graded by degeneration (square), or full-spine AP films graded by "
                               "the Cobb angle of their curve (height:width 2.2-3)")  # fmt: skip
    phantoms.add_argument("--size", type=int, default=None,
                          help="pixels: the side of a lateral view (default 256), the height of an AP film "
                               "(default 512; 1024 or more for full-size films)")  # fmt: skip
    phantoms.add_argument("--share-16bit", type=float, default=0.25, help="fraction written as 16-bit PNG")
    phantoms.set_defaults(handler=_phantoms)
    evaluate = commands.add_parser("evaluate", help="metrics with 95%% intervals, plots and per-image CSV")
    evaluate.add_argument("--model", required=True, help="model folder or Hub repo id")
    evaluate.add_argument("--data", required=True, help="dataset folder from `spine-hf data convert`")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--out", required=True, help="folder for metrics.json, PNGs and predictions.csv")
    evaluate.add_argument("--flip-tta", action="store_true", help="average with the horizontally flipped image")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the intervals")
    evaluate.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT when done")
    evaluate.set_defaults(handler=_evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="fit a temperature, grade ranges and the out-of-distribution referral on validation"
    )
    calibrate.add_argument("--model", required=True, help="model folder or Hub repo id")
    calibrate.add_argument("--data", required=True, help="dataset folder from `spine-hf data convert`")
    calibrate.add_argument("--split", default="validation", help="split everything is fitted on (default validation)")
    calibrate.add_argument("--coverage", type=float, default=0.9,
                           help="share of images whose grade range holds the true grade (default 0.9)")  # fmt: skip
    calibrate.add_argument("--referral-rate", type=float, default=0.02,
                           help="share of in-distribution images referred as unlike the training data "
                           "(default 0.02)")  # fmt: skip
    calibrate.add_argument("--describe-split", default="train",
                           help="split whose image features describe the training data (default train)")  # fmt: skip
    ranges = calibrate.add_mutually_exclusive_group()
    ranges.add_argument("--per-grade", dest="per_grade", action="store_true", default=None,
                        help="grade ranges whose coverage holds for each true grade (needs 9 images of every "
                        "grade at 90%%; the default for a fold ensemble, calibrated out of fold)")  # fmt: skip
    ranges.add_argument("--marginal", dest="per_grade", action="store_false", default=None,
                        help="one threshold for all grades: the coverage holds over all grades together (the "
                        "default for a single split)")  # fmt: skip
    calibrate.add_argument("--cv", help="a fold ensemble's cross-validation folder, whose out-of-fold predictions it "
                           "is calibrated on (default: the folder holding the ensemble)")  # fmt: skip
    calibrate.add_argument("--out", required=True, help="folder for the calibrated copy of the model")
    calibrate.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT once the copy is ready")
    calibrate.set_defaults(handler=_calibrate)

    export = commands.add_parser("export", help="export a model folder to ONNX (fp32 or int8), checked against PyTorch")
    export.add_argument("--model", required=True, help="model folder or Hub repo id")
    export.add_argument("--onnx", required=True, metavar="OUT", help="folder to write the ONNX model into")
    export.add_argument(
        "--int8", action="store_true", help="quantise to int8 with ONNX Runtime (needs --calibration-data)"
    )
    export.add_argument(
        "--calibration-data", help="dataset folder: int8 ranges from its train split, the check on validation"
    )
    export.add_argument("--calibration-split", default="train", help="split the int8 ranges come from (default train)")
    export.add_argument(
        "--check-split", default="validation", help="split the export is checked on (default validation)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT once the export is ready")
    export.set_defaults(handler=_export)

    predict = commands.add_parser("predict", help="grade image files: one JSON line per file")
    predict.add_argument("--model", required=True, help="model folder or Hub repo id")
    predict.add_argument("files", nargs="+", help="PNG, JPEG, 16-bit PNG or DICOM files")
    predict.add_argument(
        "--backend",
        choices=BACKENDS,
        help="torch: the PyTorch weights; onnx: the folder's model.onnx from `spine-hf export`, with ONNX Runtime "
        "(torch is not imported); default: onnx for an exported folder, else torch",
    )
    predict.add_argument("--flip-tta", action="store_true")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument(
        "--precision",
        choices=PREDICT_PRECISIONS,
        default="fp32",
        help="bf16: bf16 autocast, faster where bf16 is native; auto: bf16 there, else fp32 (default: fp32)",
    )
    predict.set_defaults(handler=_predict)

    push = commands.add_parser(
        "push",
        help="upload a model folder to the Hub (--repo-id), or its demo as a Gradio Space (--space)",
        description="spine-hf push --model DIR --repo-id ORG/NAME: upload a model folder. "
        "spine-hf push --space ORG/NAME --model ORG/MODEL: create the Gradio demo Space for a model on the Hub.",
    )
    push.add_argument("--model", required=True, help="model folder; with --space, the model's Hub repo id")
    where = push.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo-id", help="org/name of the model repo to upload the folder to")
    where.add_argument("--space", help="org/name of the Space to create or update")
    push.add_argument("--backend", choices=BACKENDS, default="torch",
                      help="--space: PyTorch weights (default) or an ONNX export in the model repo")  # fmt: skip
    push.add_argument("--save-to", help="--space: also keep the Space's files in this new folder")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True, help="(default)")
    visibility.add_argument("--public", dest="private", action="store_false")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    push.set_defaults(handler=_push)
    return parser


# ------------------------------------------------------------------------------------- handlers


def _evaluate(args) -> int:
    from spine_hf.predict.evaluation import evaluate_model

    result = evaluate_model(args.model, args.data, args.out, split=args.split, flip_tta=args.flip_tta,
                            bootstrap=args.bootstrap, overwrite=args.overwrite)  # fmt: skip
    print(f"{result['split']}: {result['count']} images" + (" (flip TTA)" if args.flip_tta else ""))
    for name, entry in result["metrics"].items():
        low, high = entry["ci95"]
        print(f"  {name:18s} {entry['value']:.4f}  95% CI [{low:.4f}, {high:.4f}]")
    auc = result["auc_grade_ge_2"]
    print(f"  {'AUC grade>=2':18s} {auc['value']:.4f}  95% CI [{auc['ci95'][0]:.4f}, {auc['ci95'][1]:.4f}]")
    print(f"  {'ECE':18s} {result['ece']:.4f}")
    if "grade_ranges" in result:
        ranges = result["grade_ranges"]
        per_grade = ", ".join("-" if c is None else f"{c:.0%}" for c in ranges["per_grade_coverage"])
        widths = ", ".join("-" if w is None else f"{w:.2f}" for w in ranges["per_grade_mean_width"])
        print(f"  grade ranges ({ranges['nominal_coverage']:.0%} nominal): coverage {ranges['coverage']:.1%} "
              f"[per grade {per_grade}], mean width {ranges['mean_width']:.2f} grades "
              f"[per grade {widths}]")  # fmt: skip
    if "referral" in result:
        referral = result["referral"]
        print(f"  referred as unlike the training images: {referral['referred_count']} "
              f"({referral['referred_fraction']:.1%}; threshold {referral['threshold']:.2f})")  # fmt: skip
    pngs = "confusion_matrix.png, reliability.png" + (", grade_ranges.png" if "grade_ranges" in result else "")
    print(f"wrote metrics.json, {pngs}, predictions.csv to {args.out}")
    return EXIT_OK


def _calibrate(args) -> int:
    from spine_hf.predict.calibration import calibrate_model

    report = calibrate_model(args.model, args.data, args.out, split=args.split, coverage=args.coverage,
                             referral_rate=args.referral_rate, describe_split=args.describe_split,
                             per_grade=args.per_grade, cv_folder=args.cv, overwrite=args.overwrite)  # fmt: skip
    print(
        f"temperature {report['temperature']:.4f} fitted on {report['split']} ({report['count']} images): "
        f"ECE {report['ece_before']:.4f} -> {report['ece_after']:.4f}, "
        f"NLL {report['nll_before']:.4f} -> {report['nll_after']:.4f}"
    )
    ranges, referral = report["grade_ranges"], report["referral"]
    if "not_fitted" in ranges:
        print(f"grade ranges NOT fitted: {ranges['not_fitted']}")
    else:
        if ranges["method"] == "per_grade":
            found = ", ".join(f"{t:.4f}" for t in ranges["per_grade"])
            chosen = f" for each grade: thresholds {found} (Healthy to Severe)"
        else:
            chosen = f": threshold {ranges['threshold']:.4f}"
        print(f"grade ranges for {ranges['coverage']:.0%} coverage{chosen}, mean width {ranges['mean_width']:.2f} "
              f"grades on {report['split']}")  # fmt: skip
    if "not_fitted" in referral:
        print(f"referral NOT fitted: {referral['not_fitted']}")
    else:
        print(f"referral: features of {referral['described_count']} images described; threshold "
              f"{referral['threshold']:.2f} refers {referral['referred_fraction']:.1%} of {referral['held_out']} "
              f"(rate {referral['rate']:.0%})")  # fmt: skip
    print(f"calibrated model in {args.out}")
    return EXIT_OK


def _export(args) -> int:
    from spine_hf.publish.export import export_onnx

    report = export_onnx(args.model, args.onnx, int8=args.int8, calibration_data=args.calibration_data,
                         calibration_split=args.calibration_split, check_split=args.check_split,
                         overwrite=args.overwrite)  # fmt: skip
    check = report["check"]
    qwk = f"; QWK {check['qwk_pytorch']:.4f} (PyTorch) vs {check['qwk_onnx']:.4f}" if "qwk_onnx" in check else ""
    print(f"{report['precision']} ONNX model in {args.onnx} ({report['seconds']:.0f} s). Checked on "
          f"{check['count']} images ({check['images']}): max |dp| {check['max_abs_probability_difference']:.2e}, "
          f"same grade for {check['same_grade_share']:.2%}{qwk}")  # fmt: skip
    if "warning" in report:
        print(f"warning: {report['warning']}", file=sys.stderr)
    return EXIT_OK


def _predict(args) -> int:
    import json

    from spine_hf.data.imaging import display_path
    from spine_hf.predict.inference import Prediction, Predictor

    predictor = Predictor(args.model, backend=args.backend, batch_size=args.batch_size, precision=args.precision)
    failed = 0
    for file, result in zip(args.files, predictor.predict_files(args.files, flip_tta=args.flip_tta), strict=True):
        if isinstance(result, Prediction):
            print(json.dumps({"file": display_path(file), **result.to_json()}))
        else:  # a bad file costs only its own line
            failed += 1
            print(json.dumps({"file": display_path(file), "error": str(result)}))
    return EXIT_PROBLEMS if failed else EXIT_OK


def _push(args) -> int:
    verb = "would upload" if args.dry_run else "uploaded"
    visibility = "private" if args.private else "public"
    if args.space:
        from spine_hf.publish.space import push_space

        plan = push_space(args.space, args.model, backend=args.backend, private=args.private, dry_run=args.dry_run,
                          save_to=args.save_to)  # fmt: skip
        where = f"the Gradio Space https://huggingface.co/spaces/{args.space} ({visibility}, serving {args.model})"
    else:
        from spine_hf.publish.hub import push

        plan = push(args.model, args.repo_id, private=args.private, dry_run=args.dry_run)
        where = f"https://huggingface.co/{args.repo_id} ({visibility})"
    print(f"{verb} {len(plan)} files to {where}:")
    for path, size in plan:
        print(f"  {path}  ({size:,} bytes)")
    if args.space and args.save_to:
        print(f"the Space's files are in {args.save_to}: `cd {args.save_to} && python app.py` runs it here")
    if args.space:
        print(f"if {args.model} is private, give the Space an HF_TOKEN secret (read access) in its settings")
    return EXIT_OK


def _init(args) -> int:
    from spine_hf.data.layout import init_dataset

    created = init_dataset(args.dir)
    print(f"{args.dir}: created {len(created)} folders" if created else f"{args.dir}: the layout already exists")
    return EXIT_OK


def _organize(args) -> int:
    from spine_hf.data.organize import organize

    report = organize(args.images, args.labels, args.out, move=args.move)
    _print_problems(report.problems, 50)
    verb = "moved" if args.move else "copied"
    print(_grade_table({verb: report.placed}))
    print(f"{report.rows} CSV rows: {sum(report.placed)} {verb}, {len(report.errors)} errors; {report.seconds:.2f} s")
    return EXIT_PROBLEMS if report.errors else EXIT_OK


def _split(args) -> int:
    from spine_hf.data.split import parse_ratios, split_dataset

    report = split_dataset(
        args.source,
        args.out,
        ratios=parse_ratios(args.ratios),
        seed=args.seed,
        group_regex=args.group_regex,
        groups_csv=args.groups,
        move=args.move,
    )
    _print_problems(report.problems, 30)
    print(_grade_table(report.counts, groups=report.groups))
    images = sum(sum(c) for c in report.counts.values())
    print(
        f"grouped by {report.grouping}; {images} images in {sum(report.groups.values())} groups; "
        f"{report.seconds:.2f} s ({images / max(report.seconds, 1e-9):.0f} img/s)"
    )
    return EXIT_OK


def _verify(args) -> int:
    from spine_hf.data.verify import verify_dataset

    report = verify_dataset(args.dir, group_regex=args.group_regex)
    _print_problems(report.problems, args.max_listed)
    print(_grade_table(report.counts))
    print(f"patient leakage checked with {report.patients}" if report.patients else "patient leakage not checked")
    status = "OK" if report.ok else "FAILED"
    print(
        f"{status}: {report.images} readable images, {len(report.errors)} errors, {len(report.warnings)} warnings; "
        f"{report.seconds:.2f} s ({report.images / max(report.seconds, 1e-9):.0f} img/s)"
    )
    if args.json:
        report.write_json(args.json)
        print(f"report written to {args.json}")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _convert(args) -> int:
    from spine_hf.data.convert import convert_to_dataset

    report = convert_to_dataset(args.dir, args.out, overwrite=args.overwrite, push_to_hub=args.push_to_hub,
                                private=not args.public, group_regex=args.group_regex)  # fmt: skip
    _print_problems(report.problems, 30)
    print(_grade_table(report.counts))
    if report.grouping:
        print(f"patient ids for {report.with_patient} of {report.images} images from {report.grouping}")
    print(_sizes_table(report.sizes))
    print(
        f"wrote {report.images} images to {report.out} (datasets.load_from_disk): {report.kept} kept as they were, "
        f"{report.reencoded} re-encoded to 8-bit grayscale PNG, {report.dicom} DICOM de-identified; "
        f"{report.seconds:.2f} s ({report.images / max(report.seconds, 1e-9):.0f} img/s)"
    )
    if args.push_to_hub:
        print(
            f"pushed to https://huggingface.co/datasets/{args.push_to_hub} ({'public' if args.public else 'private'})"
        )
    return EXIT_OK


def _sizes_table(sizes: dict) -> str:
    """Each split's image shapes, as `convert` recorded them (image_sizes.json)."""
    lines = ["height:width (median, range) and median size in pixels:"]
    for split, summary in sizes.items():
        aspect = summary["aspect"]
        lines.append(f"  {split:<11} {aspect['median']:.2f} ({aspect['min']:.2f}-{aspect['max']:.2f})  "
                     f"{summary['height']['median']} x {summary['width']['median']}")  # fmt: skip
    return "\n".join(lines)


def _audit(args) -> int:
    from spine_hf.training.audit import AUDIT_CSV, AUDIT_HTML, audit_labels

    report = audit_labels(args.cv, args.out, data=args.data, show=args.show, overwrite=args.overwrite)
    print(f"{report.count} images ranked by how much their out-of-fold prediction contradicts their grade; "
          f"{report.flagged} flagged as likely mislabelled by confident learning (cleanlab)")  # fmt: skip
    print(f"wrote {report.out / AUDIT_CSV} (all, ranked) and {report.out / AUDIT_HTML} (the first {report.shown}); "
          "no label or file was changed")  # fmt: skip
    return EXIT_OK


def _phantoms(args) -> int:
    from spine_hf.data.phantoms import make_phantoms

    size = args.size or (512 if args.view == "ap" else 256)
    report = make_phantoms(args.out, per_grade=args.per_grade, seed=args.seed, size=size, share_16bit=args.share_16bit,
                           view=args.view)  # fmt: skip
    print(_grade_table({"images": report.counts}))
    print(
        f"{sum(report.counts)} synthetic phantoms of {report.patients} patients ({report.sixteen_bit} as 16-bit PNG) "
        f"in {report.out}; {report.seconds:.2f} s. Synthetic drawings, not patient images."
        + (" Each film's Cobb angle (drawn, and as read) is in patients.csv." if args.view == "ap" else "")
    )
    return EXIT_OK


# ----------------------------------------------------------------------------------- formatting


def _grade_table(rows: dict[str, list[int]], groups: dict[str, int] | None = None) -> str:
    """A grade x row table with totals, e.g. splits as rows."""
    header = ["", *(f"{g} {GRADE_NAMES[g]}" for g in range(NUM_GRADES)), "total"]
    if groups is not None:
        header.append("patients")
    body = []
    for name, counts in rows.items():
        line = [name, *(str(c) for c in counts), str(sum(counts))]
        if groups is not None:
            line.append(str(groups.get(name, 0)))
        body.append(line)
    if len(rows) > 1:
        totals = [sum(c[g] for c in rows.values()) for g in range(NUM_GRADES)]
        line = ["total", *(str(t) for t in totals), str(sum(totals))]
        if groups is not None:
            line.append(str(sum(groups.values())))
        body.append(line)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in [header, *body]
    ]
    return "\n".join(lines)


def _print_problems(problems, limit: int) -> None:
    for severity in ("error", "warning"):
        chosen = [p for p in problems if p.severity == severity]
        for problem in chosen[:limit]:
            print(f"{severity.upper():7s} [{problem.code}] {problem.path}: {problem.message}")
        if len(chosen) > limit:
            print(f"{severity.upper():7s} ... and {len(chosen) - limit} more (see --json for all)")


if __name__ == "__main__":
    sys.exit(main())
