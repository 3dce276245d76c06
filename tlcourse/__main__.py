"""Command line: ``python -m tlcourse status | stage | env | course | slides | fit``.

- ``status``  which datasets and backbone weights are present, and where
- ``stage``   copy verified dataset files into ``data/``, the mirror, or a folder for a classroom
- ``env``     the environment report (Python, torch, devices) to paste into a bug report
- ``course``  execute the notebooks (papermill) into ``build/notebooks`` and ``build/html``
- ``slides``  render the notebooks to offline reveal.js decks in ``build/slides``
- ``fit``     your own image folder -> measured candidates, a chosen and tested model, a report

Errors are printed as one readable message on stderr with exit code 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tlcourse import data
from tlcourse._io import DiskWriteError
from tlcourse.courseware.course import run_course
from tlcourse.courseware.environment import report_text
from tlcourse.courseware.slides import build_slides, check_fit, print_handouts
from tlcourse.experiments.own_data import LARGER, fit_folder
from tlcourse.experiments.own_data.pipeline import CLI_NAMES, DEFAULT_BUDGET, MAX_CROP, check_arguments
from tlcourse.experiments.own_data.report import TestAlreadyScored
from tlcourse.models import BACKBONES, DEFAULT_BACKBONE, stage_weights, weights_status
from tlcourse.paths import MIRROR_ENV, data_dir, mirror_dir, shown
from tlcourse.tables import table

# Errors a learner can fix (missing files, no network, a corrupt copy); anything else is a bug
# and keeps its traceback.
USER_ERRORS = (
    data.DatasetNotFoundError,
    data.DownloadError,
    data.ChecksumError,
    data.DatasetLayoutError,
    ValueError,
    OSError,
    TestAlreadyScored,
)


def datasets_table() -> str:
    """Which datasets are present, where, and where they would download from."""
    rows = [
        (row["name"], row["found"] or "missing", row["path"] or row["url"])
        for row in data.status()
    ]
    return str(table(rows, ["dataset", "found", "path (or download source)"]))


def weights_table() -> str:
    """Which backbone weights are present, where, and what to do when they are not."""
    rows = [
        (w["backbone"], "yes" if w["present"] else "no", w["location"], w["note"])
        for w in weights_status()
    ]
    return str(table(rows, ["backbone", "present", "location", "note"]))


def run_status() -> int:
    """Print the datasets table and the backbone weights table."""
    mirror = mirror_dir()
    print(f"data dir: {data_dir()}")
    print(f"mirror:   {mirror if mirror is not None else f'(none; set {MIRROR_ENV})'}")
    print()
    print(datasets_table())
    print()
    print(weights_table())
    return 0


def resolve_destination(to: str) -> Path:
    """``data`` -> the project's data dir, ``mirror`` -> ``$TLCOURSE_MIRROR``, else a path."""
    if to == "data":
        return data_dir()
    if to == "mirror":
        mirror = mirror_dir()
        if mirror is None:
            raise ValueError(f"--to mirror needs {MIRROR_ENV} to be set to a folder")
        return mirror
    return Path(to).expanduser().resolve()


def run_stage(names: Sequence[str], to: str, weights: bool, progress: bool) -> int:
    """Stage datasets (and optionally backbone weights) into the chosen folder."""
    dest = resolve_destination(to)
    for path in data.stage(names or None, dest, progress=progress):
        print(f"staged {path}")
    if weights:
        for path in stage_weights(names=None, dest=dest):
            print(f"staged {path}")
    return 0


def run_env() -> int:
    """Print the environment report from :mod:`tlcourse.courseware.environment`."""
    print(report_text())
    return 0


def run_course_command(profile: str, names: Sequence[str], html: bool, update: bool) -> int:
    """Execute the notebooks with :func:`tlcourse.courseware.course.run_course` and print a timing table."""
    from papermill.exceptions import PapermillExecutionError

    try:
        rows = run_course(profile, names or None, html=html, update_notebooks=update)
    except PapermillExecutionError as err:
        print(f"error: a notebook failed in cell {err.exec_count} ({err.ename}: {err.evalue}).\n"
              f"The partly executed notebook in build/notebooks/ shows where; fix it and run again.",
              file=sys.stderr)
        return 1
    print()
    print(table([{"notebook": r["notebook"], "profile": r["profile"], "seconds": f"{r['seconds']:.1f}"}
                 for r in rows]))
    return 0


def run_slides_command(names: Sequence[str], source: str | None, out: str | None, pdf: bool = False,
                       check: bool = False) -> int:
    """Render the notebooks to reveal.js decks with :func:`tlcourse.courseware.slides.build_slides`;
    with ``pdf``, print each deck to a PDF handout beside it (:func:`~tlcourse.courseware.slides.print_handouts`);
    with ``check``, measure every slide in headless Chromium and fail when one does not fit the screen."""
    rows = build_slides(names or None, out=Path(out).resolve() if out else None,
                        source=Path(source).resolve() if source else None)
    print(table([(r["notebook"], r["slides"], r["figure_slides"], r["notes"], r["deck"]) for r in rows],
                ["notebook", "slides", "figure slides", "speaker notes", "deck"]))
    if pdf and rows:
        handouts = print_handouts([Path(r["deck"]) for r in rows])
        print()
        print(table([(Path(h["pdf"]).stem, h["slides"], h["pages"], h["pdf"]) for h in handouts],
                    ["handout", "slides", "pages", "pdf"]))
    if check and rows:
        fits = check_fit([Path(r["deck"]) for r in rows])
        print()
        print(table([(Path(f["deck"]).name.split(".")[0], f["slides"], len(f["overflowing"]), f["shrunk"],
                      f"{f['min_zoom']:.2f}") for f in fits],
                    ["deck", "slides", "overflowing", "shrunk to fit", "min zoom"]))
        for f in fits:
            for slide in f["overflowing"]:
                print(f"  {Path(f['deck']).name.split('.')[0]} {slide.describe()}")
        if any(f["overflowing"] for f in fits):
            print("Some slides do not fit a 1280x720 screen (listed above): move content to speaker notes "
                  "(a markdown cell with slide_type 'notes') or start a subslide in the notebook.", file=sys.stderr)
            return 1
    for row in rows:
        if not row["executed"]:
            print(f"warning: {row['notebook']} has cells without outputs; its deck shows no results. "
                  "Run `python -m tlcourse course` and use --from build/notebooks.", file=sys.stderr)
    if rows:
        print(f"\nOpen a deck in a browser (no internet needed), e.g. {rows[0]['deck']}; "
              "press s for the speaker notes, f for full screen.")
    return 0


def _number(text: str | float | None) -> int | float | str | None:
    """``"42"`` -> 42, ``"1.5"``/``"nan"`` -> float, anything else unchanged, for ``check_arguments`` to judge."""
    if not isinstance(text, str):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _process_started() -> float | None:
    """When this process started, in ``time.time()`` seconds (Linux's /proc; None elsewhere), so that
    ``fit``'s budget counts the seconds its imports took."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def run_fit_command(folder: str, out: str | None, budget: str | float, backbone: str, larger: Sequence[str],
                    seed: str | int, crop: str | None, full_ft: str, device: str = "auto",
                    rescore_test: bool = False) -> int:
    """Run :func:`tlcourse.experiments.own_data.fit_folder` on a folder and print where the report is.

    The arguments are checked first, with messages that name the options (``--budget must be ...``);
    Ctrl-C ends with a line saying how to resume instead of a traceback.
    """
    root = Path(folder).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else root.parent / (root.name + "-fit")
    settings = dict(budget=_number(budget), backbone=backbone, larger=larger, seed=_number(seed), crop=_number(crop),
                    full_ft=full_ft)
    settings["larger"] = check_arguments(folder, out_dir, **settings, names=CLI_NAMES)
    try:
        report = fit_folder(folder, out_dir, device=device, rescore_test=rescore_test, started=PROCESS_STARTED,
                            **settings)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print(f"\ninterrupted: the candidates finished so far are saved in {shown(out_dir)}; run the same command again "
              "to resume from there.", file=sys.stderr)
        return 130
    except DiskWriteError as err:  # its message says it all; "[Errno 28]" in front would not help
        print(f"error: {err.strerror}", file=sys.stderr)
        return 1
    print()
    print(table(report.candidate_table(), title="candidates, scored on validation"))
    print()
    print(report)
    print(f"report: {shown(out_dir / 'report.html')} (and report.json); model: {shown(out_dir / 'model.onnx')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m tlcourse`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m tlcourse",
        description="Helpers for the course Transfer Learning for Computer Vision.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="show which datasets and weights are present")
    stage = commands.add_parser(
        "stage", help="copy verified dataset files into data/, the mirror, or a folder"
    )
    stage.add_argument(
        "names", nargs="*", metavar="NAME",
        help=f"datasets to stage (default: all of {', '.join(data.DATASETS)})",
    )
    stage.add_argument(
        "--to", default="data", metavar="data|mirror|PATH",
        help=f"destination: the project's data dir (default), ${MIRROR_ENV}, or a folder",
    )
    stage.add_argument("--weights", action="store_true", help="also stage backbone weights")
    stage.add_argument("--no-progress", action="store_true", help="hide download progress bars")
    commands.add_parser("env", help="print the environment report")
    course = commands.add_parser(
        "course", help="execute every notebook with papermill into build/notebooks (+ HTML in build/html)"
    )
    course.add_argument("--profile", default="default", choices=["ci", "default", "gpu"])
    course.add_argument("--notebooks", nargs="*", default=[], metavar="NN",
                        help="only notebooks whose name contains one of these (e.g. 01)")
    course.add_argument("--no-html", action="store_true", help="skip the HTML renders")
    course.add_argument("--update-notebooks", action="store_true",
                        help="copy the executed notebooks back over notebooks/ (refreshes committed outputs)")
    slides = commands.add_parser(
        "slides", help="render every notebook to an offline reveal.js deck in build/slides"
    )
    slides.add_argument("--notebooks", nargs="*", default=[], metavar="NN",
                        help="only notebooks whose name contains one of these (e.g. 01)")
    slides.add_argument("--from", dest="source", default=None, metavar="DIR",
                        help="folder of executed notebooks to render (default: notebooks/, which carry outputs; "
                             "build/notebooks after `make course`)")
    slides.add_argument("--out", default=None, metavar="DIR", help="where the decks go (default: build/slides)")
    slides.add_argument("--pdf", action="store_true",
                        help="also print each deck to <notebook>.pdf beside it, one page per slide (headless Chromium)")
    slides.add_argument("--check", action="store_true",
                        help="measure every slide at 1280x720 in headless Chromium; exit 1 if one does not fit")
    fit_cmd = commands.add_parser(
        "fit", help="your own images: measure the candidate strategies, choose on validation, test once, export"
    )
    fit_cmd.add_argument("folder", metavar="FOLDER",
                         help="FOLDER/<class>/<image>, or FOLDER/{train,val|validation[,test]}/<class>/<image>")
    fit_cmd.add_argument("--out", default=None, metavar="DIR", help="report, model and caches (default: FOLDER-fit)")
    # --budget, --seed and --crop stay text here: check_arguments says what is allowed, which
    # argparse's "invalid int value" does not
    fit_cmd.add_argument("--budget", default=DEFAULT_BUDGET, metavar="SECONDS",
                         help=f"seconds for the whole run, above 0 (default {DEFAULT_BUDGET:g}); candidates that "
                              "would not fit are skipped")
    fit_cmd.add_argument("--backbone", default=DEFAULT_BACKBONE, metavar="NAME",
                         help=f"the main backbone, one of {', '.join(BACKBONES)}")
    fit_cmd.add_argument("--larger", nargs="*", default=list(LARGER), metavar="NAME",
                         help="larger backbones to probe next, while the budget lasts")
    fit_cmd.add_argument("--seed", default=0, metavar="N", help="a whole number from 0 to 4294967295 (default 0)")
    fit_cmd.add_argument("--crop", default=None, metavar="PX",
                         help=f"input size, {min(b.min_input for b in BACKBONES.values())} to {MAX_CROP} px "
                              "(default: the weights' own)")
    fit_cmd.add_argument("--full-ft", default="auto", choices=["auto", "always", "never"],
                         help="full fine-tuning: when the estimated time fits the budget (auto), always, never")
    fit_cmd.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                         help="where the backbone passes and fine-tunes run (default auto: the GPU when there is one)")
    fit_cmd.add_argument("--rescore-test", action="store_true",
                         help="let a new choice score a test set an earlier run already scored (a second look; "
                              "the report says so)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code (0 ok, 1 a readable error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "status":
            return run_status()
        if args.command == "stage":
            return run_stage(args.names, args.to, args.weights, progress=not args.no_progress)
        if args.command == "course":
            return run_course_command(args.profile, args.notebooks, not args.no_html, args.update_notebooks)
        if args.command == "slides":
            return run_slides_command(args.notebooks, args.source, args.out, args.pdf, args.check)
        if args.command == "fit":
            return run_fit_command(args.folder, args.out, args.budget, args.backbone, args.larger, args.seed,
                                   args.crop, args.full_ft, args.device, args.rescore_test)
        return run_env()
    except ImportError as err:
        print(f"error: this command needs a module that is not available: {err}", file=sys.stderr)
        return 1
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


#: Set only when this file runs as ``python -m tlcourse``: then ``fit``'s budget counts the imports. A
#: ``main()`` called inside a longer-lived process (a notebook, the tests) starts its clock at the call.
PROCESS_STARTED: float | None = None

if __name__ == "__main__":
    PROCESS_STARTED = _process_started()
    sys.exit(main())
