"""`triton-guard guard`: add a guard for a model, or for every model of a repository (--all), to a model repository."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from triton_guard.cli.arguments import add_url
from triton_guard.cli.exit_codes import EXIT_FAILED, EXIT_OK, refused


def add_parser(subparsers) -> None:
    guard = subparsers.add_parser(
        "guard",
        help="add a guard for MODEL (or --all models) to a model repository (exit 0 written, 1 refused: nothing written)",
        description=(
            "Placements: a guard model MODEL_guard that clients call instead (the default; --ensemble reroutes an "
            "ensemble through it); --rename: the guard takes MODEL's name and MODEL moves to MODEL_unguarded "
            "(clients unchanged, any backend); --in-process: a Python MODEL runs behind the guard in its own process. "
            "--all picks per model: in-process for Python, --rename for any other backend. "
            "`triton-guard unguard MODEL` undoes any of them."
        ),
    )
    guard.add_argument("model", metavar="MODEL", nargs="?", help="the model to guard (a folder of the repository)")
    guard.add_argument("--all", action="store_true", help="guard every model it can; print what it did and skipped, and why")
    guard.add_argument("--dry-run", action="store_true", help="print what would be done; write nothing")
    guard.add_argument("--model-repository", required=True, metavar="DIR", help="the repository MODEL is in")
    guard.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="a guard parameter (docs/reference/parameters.md), e.g. timeout_ms=2000; repeat for more",
    )
    placement = guard.add_mutually_exclusive_group()
    placement.add_argument(
        "--in-process", action="store_true",
        help="guard a Python MODEL inside its own process: its config becomes backend \"guard\" (no second model)",
    )
    placement.add_argument(
        "--rename", action="store_true",
        help="the guard takes MODEL's name; MODEL moves to MODEL_unguarded (clients keep calling MODEL)",
    )
    guard.add_argument(
        "--ensemble", metavar="NAME", help="also reroute the steps of ensemble NAME that call MODEL through MODEL_guard"
    )
    add_url(guard, "gRPC HOST:PORT of the server that runs the models, asked for a config the repository does not "
            "declare (Triton completes it at load)")
    guard.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The command as a person would type it again (kept in the record unguard reads)."""
    words = ["triton-guard", "guard", *([args.model] if args.model else []), *(["--all"] if args.all else [])]
    words += [flag for flag, on in (("--in-process", args.in_process), ("--rename", args.rename)) if on]
    words += ["--ensemble", args.ensemble] if args.ensemble else []
    for param in args.param:
        words += ["--param", param]
    return " ".join(shlex.quote(w) for w in words)


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.all and args.model:
        return "give MODEL or --all, not both"
    if not args.all and not args.model:
        return "give the MODEL to guard, or --all"
    if args.all and (args.ensemble or args.in_process or args.rename):
        return "--all picks the placement of each model (in-process for Python, --rename for the rest): no placement flag"
    if args.ensemble and (args.in_process or args.rename):
        return f"--ensemble with {'--in-process' if args.in_process else '--rename'}: clients keep calling the model itself, nothing to reroute"
    return None


def run(args: argparse.Namespace) -> int:
    from triton_guard.guard_writer import GuardRefused, Server, parse_params
    from triton_guard.guard_writer.commands import server_lines

    prog = "triton-guard guard"
    problem = _usage_problem(args)
    if problem:
        return refused(prog, problem)
    repository, server, command = Path(args.model_repository), Server.at(args.url), _command(args)
    try:
        params = parse_params(args.param)
        if args.all:
            return _guard_all(repository, params, server, command, args.dry_run)
        plan = _plan_one(args, repository, params, server, command)
        written = plan.written if args.dry_run else plan.apply(command)
    except GuardRefused as exc:
        return refused(prog, exc)
    print("\n".join(written.lines()))
    if args.dry_run:
        print("dry run: nothing written")
    else:
        print("\n".join(server_lines(written.server_steps, args.url)))
    return EXIT_OK


def _plan_one(args, repository, params, server, command):
    from triton_guard.guard_writer import plan_guard_model, plan_in_process, plan_renamed

    if args.in_process:
        return plan_in_process(repository, args.model, params, server, command)
    if args.rename:
        return plan_renamed(repository, args.model, params, server, command)
    return plan_guard_model(repository, args.model, params, args.ensemble, server, command)


def _guard_all(repository, params, server, command, dry_run: bool) -> int:
    from triton_guard.guard_writer import apply_all, plan_all, server_steps, summary, table
    from triton_guard.guard_writer.commands import server_lines

    rows = plan_all(repository, params, server, command)
    if not dry_run:
        apply_all(rows, command)
    print("\n".join(table(rows, dry_run)))
    print("\n".join(summary(rows, dry_run, server)))
    if not dry_run:
        print("\n".join(server_lines(server_steps(rows), server.url, "picks these up on restart")))
    return EXIT_FAILED if any(row.failed for row in rows) else EXIT_OK
