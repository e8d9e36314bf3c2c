"""`kresize-operator`: run the operator in cluster or out of cluster against any kubeconfig."""

from __future__ import annotations

import argparse
import logging
import os
import socket

import kopf
import prometheus_client
from kresize_common.typed_settings import load

from . import handlers
from .config import OperatorSettings


def operator_identity() -> str:
    """Who this operator is to kopf (peering, logs). kopf's own guess calls getpass.getuser(), which fails
    in a pod whose uid has no passwd entry and no USER/LOGNAME (ours: 65532), so it is never left to guess.
    The chart passes the pod's name (POD_NAME, from the downward API); out of cluster, the host name."""
    return os.environ.get("POD_NAME") or f"kresize-operator@{socket.gethostname()}"


def quiet_watchers(record: logging.LogRecord) -> bool:
    """Drop kopf's "Handler 'observe_...' succeeded." line, one per watch event of every ResizeJob and Job:
    the scheduler logs what those events change."""
    return not record.getMessage().startswith("Handler 'observe_")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kresize-operator", description=__doc__)
    parser.add_argument("--namespace", help="namespace to watch (default: KRESIZE_NAMESPACE or the pod's)")
    parser.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz "
                                           "(default: KRESIZE_OPERATOR_LIVENESS, else none)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.namespace:
        os.environ["KRESIZE_NAMESPACE"] = args.namespace
    config = load(OperatorSettings, "kresize-operator")
    # kopf's own logging: JSON lines name the ResizeJob of every per-object line (key "resizejob").
    kopf.configure(verbose=args.verbose, log_refkey="resizejob",
                   log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL)
    logging.getLogger("kopf.objects").addFilter(quiet_watchers)
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    kopf.run(
        registry=registry,
        memo=kopf.Memo(config=config),
        standalone=True,  # one replica; no peering CRDs needed
        namespaces=[config.namespace],
        liveness_endpoint=args.liveness or config.operator_liveness or None,
        identity=operator_identity(),  # type: ignore[arg-type]  # kopf.Identity is a NewType of str
    )


if __name__ == "__main__":
    main()
