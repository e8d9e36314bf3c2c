"""`kresize-operator`: run the operator in cluster or out of cluster against any kubeconfig."""

from __future__ import annotations

import argparse
import logging
import os

import kopf


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
    )


if __name__ == "__main__":
    main()
