"""``kubeobs logs``: search, follow and chart the shipped logs (instead of Kibana Discover, ``kubectl logs``
or stern). Run ``kubeobs logs --help`` for the flags and the query language.

Exit codes: 0 done (also after Ctrl-C or SIGTERM while following); 2 bad flags or a bad query (one line
pointing at the offending token); 3 the backend cannot be reached or cannot answer (the URL and why);
130 Ctrl-C during a search.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import orjson

from kubeobs.search.backend import Backend, BackendError, SearchRequest
from kubeobs.search.query import Match, Node, QueryError, all_of, any_of, label_selector, parse
from kubeobs.search.render import FORMATS, Renderer
from kubeobs.search.timerange import TimeRange, parse_duration, parse_time

__all__ = ["DEFAULT_BACKEND", "build_parser", "main"]

PROG = "kubeobs logs"
DEFAULT_BACKEND = "./kubeobs-data/kubeobs-logs.db"  # what `kubeobs up` writes (default --data-dir)
EXIT_USAGE = 2
EXIT_BACKEND = 3

_EPILOG = (
    """\
query language (over the message, case-insensitive; the same on both backends):
  timeout                  lines with the word "timeout"
  "connection refused"     the words next to each other (a phrase)
  time*                    words starting with "time" (letters and digits before the *)
  error AND NOT retry      also: error -retry, error AND (db OR cache), a OR b
  field:value              exact, case-sensitive: namespace ns pod container node (host) stream
                           file (path) image container_id pod_uid labels.<key> (label.<key>);
                           * and ? in the value make a glob: pod:web-*; message:... is the text
  quote text that contains spaces, ( ) or a ':' ("GET /api:v2"); AND OR NOT in capitals only;
  a query that starts with '-' goes after '--': kubeobs logs -- '-namespace:kube-system error'
times: 15m, 2h30m, 1d (ago), now, 2024-03-01T12:00:00.123Z, 2024-03-01 12:00 (UTC), 2024-03-01
  --from is included, --to is not
backend: an http(s):// URL is Elasticsearch (user:password@ in the URL, or the auth flags), a path
  or sqlite:///path is the one-machine store; default $KUBEOBS_BACKEND, else """
    + DEFAULT_BACKEND
    + """
examples:
  kubeobs logs -n shop --since 15m 'error OR "timed out"'
  kubeobs logs --pod 'web-*' -l app=web --stream stderr -f
  kubeobs logs --histogram --since 1h 'status 502'
  kubeobs logs -o json --limit 0 --from 2024-03-01 --to 2024-03-02 > day.jsonl
exit codes: 0 ok, 2 bad flags or query, 3 backend unreachable or failing, 130 interrupted
"""
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            return parse_duration(text) / 1e9
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Search the collected container logs: newest first, filtered by text, namespace, "
        "pod, container, node, labels, stream and time; follow new lines; chart volume over time.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("query", nargs="*", metavar="QUERY", help="query (several words are joined with spaces)")
    f = p.add_argument_group("filters (repeat a flag to allow several values)")
    f.add_argument("-n", "--namespace", action="append", default=[], metavar="NS", help="namespace (glob)")
    f.add_argument("--pod", action="append", default=[], metavar="GLOB", help="pod name, e.g. 'web-*'")
    f.add_argument("-c", "--container", action="append", default=[], metavar="NAME", help="container (glob)")
    f.add_argument("--node", action="append", default=[], metavar="NODE", help="node name (glob)")
    f.add_argument(
        "-l",
        "--selector",
        action="append",
        default=[],
        metavar="SEL",
        help="labels as kubectl takes them: app=web, tier!=db, app, !canary (comma: and)",
    )
    f.add_argument("--stream", choices=["stdout", "stderr"], help="only this stream")
    t = p.add_argument_group("time")
    t.add_argument("--since", type=_duration, metavar="DURATION", help="lines of the last DURATION (15m, 2h)")
    t.add_argument("--from", dest="from_", metavar="TIME", help="lines at or after TIME")
    t.add_argument("--to", metavar="TIME", help="lines before TIME")
    o = p.add_argument_group("results")
    o.add_argument(
        "--limit", type=_positive_int, metavar="N", help="at most N lines (default 100; 10 with -f); 0: all"
    )
    o.add_argument("--reverse", action="store_true", help="oldest first")
    o.add_argument("-f", "--follow", action="store_true", help="then print new lines as they arrive (Ctrl-C)")
    o.add_argument("-o", "--output", choices=FORMATS, default="text", help="text (default), json or wide")
    o.add_argument(
        "--color", choices=["auto", "always", "never"], default="auto", help="colour (auto: a tty)"
    )
    o.add_argument("--histogram", action="store_true", help="line counts over time, and the busiest pods")
    o.add_argument("--interval", type=_duration, metavar="DURATION", help="histogram bucket (default: auto)")
    o.add_argument(
        "--top", type=_positive_int, default=5, metavar="N", help="histogram: busiest N (default 5)"
    )
    o.add_argument("--explain", action="store_true", help="print the backend query instead of running it")
    b = p.add_argument_group("backend")
    b.add_argument("--backend", metavar="URL", help="Elasticsearch URL or store path (see below)")
    b.add_argument(
        "--index",
        default=os.environ.get("KUBEOBS_INDEX", "logs-k8s-*"),
        help="Elasticsearch index pattern (default $KUBEOBS_INDEX, else logs-k8s-*)",
    )
    b.add_argument("--username", default=os.environ.get("KUBEOBS_ES_USERNAME"), help="Elasticsearch user")
    b.add_argument(
        "--password",
        default=os.environ.get("KUBEOBS_ES_PASSWORD"),
        help="default $KUBEOBS_ES_PASSWORD (better than the flag: others can list processes' flags)",
    )
    b.add_argument(
        "--api-key", default=os.environ.get("KUBEOBS_ES_API_KEY"), help="default $KUBEOBS_ES_API_KEY"
    )
    b.add_argument("--ca-certs", metavar="FILE", help="CA bundle for https")
    b.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    b.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="SECONDS", help="per request (default 30)"
    )
    b.add_argument(
        "--poll", type=_seconds, default=1.0, metavar="SECONDS", help="-f: poll interval (default 1)"
    )
    b.add_argument(
        "--follow-window",
        type=_duration,
        default=30_000_000_000,
        metavar="DURATION",
        help="-f on Elasticsearch: how late (by timestamp) a line may become searchable and still be shown "
        "(default 30s)",
    )
    return p


class UsageError(Exception):
    """A flag combination or value we reject (exit 2)."""


_NAME = re.compile(r"[A-Za-z0-9._*?-]+")  # Kubernetes object names, and our glob characters


def _flag_filter(flag: str, path: str, values: Sequence[str]) -> Node:
    nodes: list[Node] = []
    for v in values:
        if not v:
            raise UsageError(f"{flag}: empty value")
        if not _NAME.fullmatch(v):
            # e.g. `kubeobs logs '-namespace:x error'` parsed by argparse as `-n 'amespace:x error'`
            raise UsageError(
                f"{flag}: {v!r} is not a Kubernetes name (a query starting with '-' goes after '--':"
                " kubeobs logs -- '-word ...')"
            )
        nodes.append(Match(path, v, glob="*" in v or "?" in v))
    return any_of(nodes) if nodes else all_of([])


def build_request(args: argparse.Namespace, now_ns: int) -> SearchRequest:
    """The search the flags ask for (raises QueryError or UsageError)."""
    nodes: list[Node] = [parse(" ".join(args.query))]
    nodes.append(_flag_filter("-n/--namespace", "kubernetes.namespace", args.namespace))
    nodes.append(_flag_filter("--pod", "kubernetes.pod.name", args.pod))
    nodes.append(_flag_filter("-c/--container", "kubernetes.container.name", args.container))
    nodes.append(_flag_filter("--node", "kubernetes.node.name", args.node))
    nodes.extend(label_selector(sel) for sel in args.selector)
    if args.stream:
        nodes.append(Match("stream", args.stream))
    if args.since is not None and args.from_ is not None:
        raise UsageError("--since and --from cannot be used together")
    try:
        start = now_ns - args.since if args.since is not None else None
        if args.from_ is not None:
            start = parse_time(args.from_, now_ns)
        end = parse_time(args.to, now_ns) if args.to is not None else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    if start is not None and end is not None and end <= start:
        raise UsageError("--to must be after --from")
    if args.follow:
        for flag, bad in (
            ("--to", end is not None),
            ("--reverse", args.reverse),
            ("--histogram", args.histogram),
        ):
            if bad:
                raise UsageError(f"{flag} cannot be used with --follow")
    limit = args.limit if args.limit is not None else (10 if args.follow else 100)
    return SearchRequest(
        query=all_of(nodes),
        time=TimeRange(start, end),
        newest_first=not args.reverse,
        limit=None if limit == 0 and not args.follow else limit,
    )


def _backend_spec(args: argparse.Namespace) -> str:
    return str(args.backend or os.environ.get("KUBEOBS_BACKEND") or DEFAULT_BACKEND)


def _is_es(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _store_path(spec: str) -> str:
    if spec.startswith("sqlite://"):
        return spec[len("sqlite://") :]
    if "://" in spec:
        raise UsageError(
            f"--backend: unknown scheme in {spec!r} (http://, https://, sqlite:///path or a path)"
        )
    return spec


def open_backend(args: argparse.Namespace) -> Backend:
    spec = _backend_spec(args)
    if _is_es(spec):
        from kubeobs.search.es import EsBackend, redact_url

        options: dict[str, Any] = {"request_timeout": args.timeout}
        if args.username:
            options["basic_auth"] = (args.username, args.password or "")
        if args.api_key:
            options["api_key"] = args.api_key
        if args.ca_certs:
            options["ca_certs"] = args.ca_certs
        if args.insecure:
            options["verify_certs"] = False
            options["ssl_show_warn"] = False
        if args.ca_certs and not os.path.isfile(args.ca_certs):
            raise UsageError(f"--ca-certs: no such file: {args.ca_certs}")
        try:
            return EsBackend(spec, index=args.index, follow_window_ns=args.follow_window, **options)
        except ValueError as e:  # the client's own checks: a URL without a host, two kinds of auth...
            raise UsageError(f"--backend {redact_url(spec)}: {e}") from None
    from kubeobs.search.sqlite import SqliteBackend

    return SqliteBackend(_store_path(spec))


def explain(args: argparse.Namespace, request: SearchRequest) -> str:
    """The backend query for ``request``, as the backend would get it (no connection needed)."""
    spec = _backend_spec(args)
    if _is_es(spec):
        from kubeobs.search.es import compile_request, sort_clause

        body = {"query": compile_request(request), "sort": sort_clause(request.newest_first)}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    from kubeobs.search.sqlite import compile_request as compile_sql

    _store_path(spec)
    sql = compile_sql(request)
    return f"WHERE {sql.text}\nparams: {orjson.dumps(list(sql.params)).decode()}"


def _use_colour(choice: str, stream: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def _progress(stderr: TextIO) -> Callable[[int, int], None] | None:
    if not stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if done >= total:
            stderr.write("\r\x1b[K")
        else:
            stderr.write(f"\r\x1b[K{PROG}: counting {done}/{total}…")
        stderr.flush()

    return show


def _run(
    args: argparse.Namespace, request: SearchRequest, backend: Backend, out: TextIO, err: TextIO, now_ns: int
) -> int:
    colour = _use_colour(args.color, out)
    if args.histogram:
        from kubeobs.search.histogram import compute, draw, to_json

        hist = compute(
            backend,
            request,
            now_ns=now_ns,
            interval_ns=args.interval,
            top=args.top,
            max_buckets=max(10, min(60, shutil.get_terminal_size().lines - 8)) if out.isatty() else 40,
            progress=_progress(err),
        )
        if hist is None:
            if args.output == "json":
                out.write("null\n")
            else:
                err.write(f"{PROG}: no matching lines\n")
            return 0
        if args.output == "json":
            out.write(orjson.dumps(to_json(hist)).decode() + "\n")
        else:
            encoding = (getattr(out, "encoding", None) or "").lower().replace("-", "")
            lines = draw(
                hist, width=shutil.get_terminal_size().columns, colour=colour, unicode=encoding == "utf8"
            )
            out.write("\n".join(lines) + "\n")
        return 0
    renderer = Renderer(out, args.output, colour=colour)
    if args.follow:
        from kubeobs.search.follow import follow

        stop = threading.Event()
        previous = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (a supervisor, `timeout`) ends following as cleanly as Ctrl-C does
            previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
        try:
            follow(
                backend.follower(request),
                renderer.write,
                renderer.flush,
                backlog=request.limit if request.limit != 0 else None,
                interval=args.poll,
                stop=stop,
            )
        except KeyboardInterrupt:
            stop.set()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return 0
    shown = 0
    for hit in backend.search(request):
        renderer.write(hit)
        shown += 1
    renderer.flush()
    if shown == 0 and out.isatty():
        err.write(f"{PROG}: no matching lines\n")
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    now_ns: Callable[[], int] = time.time_ns,
) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = build_parser().parse_args(argv)  # exits 2 on bad flags
    now = now_ns()
    try:
        request = build_request(args, now)
        if args.explain:
            out.write(explain(args, request) + "\n")
            return 0
        backend = open_backend(args)
    except (QueryError, UsageError) as e:
        err.write(f"{PROG}: {e}\n")
        return EXIT_USAGE
    except BackendError as e:
        err.write(f"{PROG}: cannot search {e.url}: {e.reason}\n")
        return EXIT_BACKEND
    try:
        return _run(args, request, backend, out, err, now)
    except BackendError as e:
        err.write(f"{PROG}: cannot search {e.url}: {e.reason}\n")
        return EXIT_BACKEND
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        backend.close()
