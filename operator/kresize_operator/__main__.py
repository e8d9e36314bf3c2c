"""`kresize-operator`: run the operator in cluster or out of cluster against any kubeconfig."""

from __future__ import annotations

import argparse
import logging
import os
import socket

import kopf


def operator_identity() -> str:
    """Who this operator is to kopf (peering, logs). kopf's own guess calls getpass.getuser(), which fails
    in a pod whose uid has no passwd entry and no USER/LOGNAME (ours: 65532), so it is never left to guess.
    The chart passes the pod's name (POD_NAME, from the downward API); out of cluster, the host name."""
    return os.environ.get("POD_NAME") or f"kresize-operator@{socket.gethostname()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kresize-operator", description=__doc__)
    parser.add_argument("--namespace", help="namespace to watch (default: KRESIZE_NAMESPACE or the pod's)")
    parser.add_argument("--liveness", default=os.environ.get("KRESIZE_OPERATOR_LIVENESS", ""),
                        help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz (default: none)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.namespace:
        os.environ["KRESIZE_NAMESPACE"] = args.namespace
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from . import handlers  # registers the handlers; reads the configuration

    kopf.run(
        standalone=True,  # one replica; no peering CRDs needed
        namespaces=[handlers.CONFIG.namespace],
        liveness_endpoint=args.liveness or None,
        identity=operator_identity(),  # type: ignore[arg-type]  # kopf.Identity is a NewType of str
    )


if __name__ == "__main__":
    main()
