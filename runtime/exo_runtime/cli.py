"""`exo-runtime serve`, `rpc-worker` and `fetch`; every flag also reads an EXO_* variable.

Pods set environment variables more easily than arguments, so `--context-length` falls back
to `EXO_CONTEXT_LENGTH`, and so on; a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from exo_runtime.engine import DEFAULT_MAX_CONTEXT_LENGTH, EngineOptions
from exo_runtime.limits import Limits
from exo_runtime.rpc_workers import DEFAULT_RPC_PORT, parse_endpoints


def _env_name(flag: str) -> str:
    return "EXO_" + flag.lstrip("-").replace("-", "_").upper()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _rpc_workers(text: str) -> tuple[str, ...]:
    try:
        return tuple(str(endpoint) for endpoint in parse_endpoints(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _tensor_split(text: str) -> tuple[float, ...]:
    try:
        shares = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.5,0.5, got {text!r}"
        ) from err
    if not shares or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected non-negative shares with a positive sum, got {text!r}"
        )
    return shares


def _add_switch(parser: argparse.ArgumentParser, flag: str, *, help: str) -> None:
    """Add an on/off `flag`, on by default when its EXO_* variable is 1, true or yes."""
    env = _env_name(flag)
    on = os.environ.get(env, "").lower() in ("1", "true", "yes")
    parser.add_argument(flag, action="store_true", default=on, help=f"{help} (env {env}=true)")


def _add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    type: Callable[[str], Any] = str,
    default: Any = None,
    help: str,
    env: str | None = None,
    **kwargs: Any,
) -> None:
    """Add `flag` whose default comes from its EXO_* variable (or `env`) when that is set."""
    env = env or _env_name(flag)
    raw = os.environ.get(env)
    if raw not in (None, ""):
        try:
            default = type(raw)
        except (ValueError, argparse.ArgumentTypeError) as err:
            parser.error(f"{env}={raw!r} is invalid: {err}")
    parser.add_argument(flag, type=type, default=default, help=f"{help} (env {env})", **kwargs)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--model", help="path of the .gguf file or MLX model folder", required=False)
    _add(parser, "--engine", default="auto", choices=("auto", "llamacpp", "mlx"), help="engine")
    _add(parser, "--host", default="127.0.0.1", help="address to listen on")
    _add(parser, "--port", type=_positive_int, default=8000, help="port to listen on")
    _add(parser, "--model-name", help="model id in the API (default: the file name)")
    _add(
        parser,
        "--context-length",
        type=_positive_int,
        help="tokens per sequence (default: the model's trained context, capped at "
        "--max-context-length)",
    )
    _add(
        parser,
        "--max-context-length",
        type=_positive_int,
        default=DEFAULT_MAX_CONTEXT_LENGTH,
        help="cap on the model's trained context when --context-length is not given",
    )
    _add(
        parser,
        "--gpu-layers",
        type=int,
        help="layers to offload to the GPU (default: all when the build supports a GPU, else 0)",
    )
    _add(
        parser,
        "--tensor-split",
        type=_tensor_split,
        default=(),
        help="share per device (RPC workers first, in --rpc-workers order, then GPUs), e.g. "
        "0.5,0.5 (default: in proportion to each device's free memory)",
    )
    _add(
        parser,
        "--rpc-workers",
        type=_rpc_workers,
        default=(),
        help="llama.cpp RPC workers (`exo-runtime rpc-worker`) to split the model across, "
        f"as host:port[,host:port...], e.g. worker-0:{DEFAULT_RPC_PORT}",
    )
    _add(
        parser,
        "--rpc-connect-timeout",
        type=_positive_float,
        default=300.0,
        help="seconds to wait for every RPC worker to answer before the load fails",
    )
    _add(parser, "--threads", type=_positive_int, help="CPU threads (default: the CPUs available)")
    _add(parser, "--batch-size", type=_positive_int, default=512, help="most tokens per decode")
    _add(parser, "--parallel", type=_positive_int, default=8, help="sequences decoded together")
    _add(
        parser,
        "--prefix-cache-entries",
        type=_non_negative_int,
        default=8,
        help="finished sequences kept for reuse of their prompt prefix, at most --parallel "
        "(0: off)",
    )
    _add_switch(
        parser,
        "--swa-full",
        help="keep a sliding-window model's whole KV cache, so prefixes longer than the window "
        "are reused; batched decode is slower (off, as llama-server)",
    )
    _add(
        parser,
        "--chat-template",
        help="Jinja chat template: a file path, a shipped template's name (chatml-tools) or the "
        "template itself",
    )
    _add(
        parser,
        "--chat-template-file",
        help="file holding the Jinja chat template that replaces the model's own (as llama-server)",
    )
    _add(parser, "--warmup-prompt", default="Hello", help="prompt generated once before ready")
    _add(parser, "--warmup-max-tokens", type=_positive_int, default=8, help="warmup length")
    _add(parser, "--max-queue", type=_non_negative_int, default=64, help="most waiting requests")
    _add(parser, "--shutdown-timeout", type=float, default=30.0, help="seconds to drain on SIGTERM")
    _add_switch(
        parser,
        "--require-verified",
        help="refuse a model file without the intact .verified.json that `exo-runtime fetch` "
        "writes",
    )
    limits = Limits()
    _add(
        parser,
        "--max-body-bytes",
        type=_positive_int,
        default=limits.max_body_bytes,
        help="largest request body; larger ones get 413",
    )
    _add(
        parser,
        "--max-prompt-bytes",
        type=_positive_int,
        default=limits.max_prompt_bytes,
        help="largest prompt (or chat text) before tokenizing; larger ones get 413",
    )
    _add(
        parser,
        "--max-concurrent-requests",
        type=_positive_int,
        default=limits.max_concurrent_requests,
        help="most /v1 requests handled at once; more get 503 (probes are never refused)",
    )
    _add(
        parser,
        "--max-failed-steps",
        type=_positive_int,
        default=3,
        help="engine steps failing in a row before /healthz answers 503",
    )
    _add(parser, "--api-key", help="when set, /v1 requests need 'Authorization: Bearer KEY'")


def _serve(args: argparse.Namespace) -> int:
    from exo_runtime.server import ServeConfig, serve

    if not args.model:
        print("exo-runtime serve: --model (or EXO_MODEL) is required", file=sys.stderr)
        return 2
    chat_template = args.chat_template
    if args.chat_template_file:
        from exo_runtime.chat_template import ChatTemplateError, read_template_file

        if chat_template:
            print(
                "exo-runtime serve: give --chat-template or --chat-template-file, not both",
                file=sys.stderr,
            )
            return 2
        try:
            chat_template = read_template_file(args.chat_template_file)
        except ChatTemplateError as err:
            print(f"exo-runtime serve: {err}", file=sys.stderr)
            return 2
    config = ServeConfig(
        model_path=args.model,
        engine=args.engine,
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        options=EngineOptions(
            context_length=args.context_length,
            max_context_length=args.max_context_length,
            gpu_layers=args.gpu_layers,
            tensor_split=args.tensor_split,
            threads=args.threads,
            batch_size=args.batch_size,
            parallel=args.parallel,
            prefix_cache_entries=args.prefix_cache_entries,
            swa_full=args.swa_full,
            rpc_workers=args.rpc_workers,
            rpc_connect_timeout=args.rpc_connect_timeout,
        ),
        chat_template=chat_template,
        warmup_prompt=args.warmup_prompt,
        warmup_max_tokens=args.warmup_max_tokens,
        max_queue=args.max_queue,
        shutdown_timeout=args.shutdown_timeout,
        require_verified=args.require_verified,
        limits=Limits(
            max_body_bytes=args.max_body_bytes,
            max_prompt_bytes=args.max_prompt_bytes,
            max_concurrent_requests=args.max_concurrent_requests,
        ),
        api_key=args.api_key or None,
        max_failed_steps=args.max_failed_steps,
    )
    return serve(config)


def add_rpc_worker_arguments(parser: argparse.ArgumentParser) -> None:
    _add(
        parser,
        "--host",
        default="127.0.0.1",
        env="EXO_RPC_HOST",
        help="address to listen on (0.0.0.0 in a pod: the server has no authentication, so "
        "keep it on a network only the head reaches)",
    )
    _add(
        parser,
        "--port",
        type=_positive_int,
        default=DEFAULT_RPC_PORT,
        env="EXO_RPC_PORT",
        help="port to listen on",
    )
    _add(
        parser,
        "--threads",
        type=_positive_int,
        env="EXO_RPC_THREADS",
        help="CPU threads of the CPU device (default: the CPUs available)",
    )


def _rpc_worker(args: argparse.Namespace) -> int:
    from exo_runtime.rpc_worker import run_rpc_worker
    from exo_runtime.rpc_workers import Endpoint

    threads = args.threads or len(os.sched_getaffinity(0))
    return run_rpc_worker(Endpoint(args.host, args.port), threads)


def _fetch_missing(_args: argparse.Namespace) -> int:
    print("exo-runtime fetch: this build has no fetcher (exo_runtime.fetcher)", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exo-runtime", description="Serve an LLM over HTTP.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve a model (OpenAI-compatible API)")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(run=_serve)
    worker_parser = commands.add_parser(
        "rpc-worker", help="serve this node's device to a head over llama.cpp RPC"
    )
    add_rpc_worker_arguments(worker_parser)
    worker_parser.set_defaults(run=_rpc_worker)
    fetch_parser = commands.add_parser("fetch", help="download a model into a folder")
    try:  # the fetcher is optional at import time so `serve` never depends on it
        from exo_runtime.fetcher import add_fetch_arguments, run_fetch
    except ImportError:
        fetch_parser.set_defaults(run=_fetch_missing)
    else:
        add_fetch_arguments(fetch_parser)
        fetch_parser.set_defaults(run=run_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("EXO_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
