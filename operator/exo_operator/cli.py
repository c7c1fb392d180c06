"""`exo-operator run`: the operator's command line, a thin wrapper over kopf."""

import argparse
import logging
import random
import sys

import kopf
from pydantic import ValidationError

from exo_operator import metrics
from exo_operator.settings import OperatorSettings

LOG_FORMATS = {
    "json": kopf.LogFormat.JSON,
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exo-operator",
        description="Serves LLMs on Kubernetes: reconciles ExoModel resources. "
        "Settings come from EXO_* environment variables (e.g. EXO_RUNTIME_IMAGE).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator until interrupted")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NAME",
        help="watch only this namespace (repeat for several; globs such as team-* work)",
    )
    ha = run.add_mutually_exclusive_group()
    ha.add_argument(
        "--standalone",
        action="store_true",
        help="run alone, without peering (the default); never run two standalone replicas",
    )
    ha.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through the KopfPeering object NAME (high availability)",
    )
    run.add_argument(
        "--priority",
        type=int,
        help="peering priority; the highest runs (with --peering: random per process by default)",
    )
    run.add_argument(
        "--liveness",
        metavar="URL",
        help="serve the liveness probe at this URL, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDRESS:PORT/metrics; 0 (the default) disables",
    )
    run.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 in a pod)",
    )
    run.add_argument("--log-format", choices=sorted(LOG_FORMATS), default="plain")
    run.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    run.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def peering_priority(priority: int | None, peering: str | None) -> int:
    """The priority given, else a random one when peering.

    kopf freezes every operator of a peering when two share the highest priority, so replicas
    started from one Deployment (one command line) must not all default to the same value.
    """
    if priority is not None:
        return priority
    if peering is None:
        return 0
    return random.SystemRandom().randint(1, 2**31 - 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        OperatorSettings()
    except ValidationError as error:
        print(f"exo-operator: invalid EXO_* setting:\n{error}", file=sys.stderr)
        return 2
    if args.metrics_port:
        try:
            metrics.serve(args.metrics_port, args.metrics_address)
        except OSError as error:
            print(
                f"exo-operator: cannot serve metrics on "
                f"{args.metrics_address}:{args.metrics_port}: {error}",
                file=sys.stderr,
            )
            return 2
    kopf.configure(verbose=args.verbose, quiet=args.quiet, log_format=LOG_FORMATS[args.log_format])
    # Importing registers the handlers with kopf's default registry.
    import exo_operator.handlers  # noqa: F401

    try:
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=args.namespace or (),
            standalone=not args.peering,
            peering_name=args.peering,
            priority=peering_priority(args.priority, args.peering),
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(),
        )
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        logging.getLogger("exo_operator").error("exo-operator stopped: %s", error)
        print(f"exo-operator: {error}", file=sys.stderr)
        return 1
    return 0
