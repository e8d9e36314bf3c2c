"""`kresize-api`: serve the upload API with uvicorn (KRESIZE_API_HOST / KRESIZE_API_PORT)."""

from __future__ import annotations

import argparse
import logging

import prometheus_client
import uvicorn
from kresize_common import logs
from kresize_common.typed_settings import load

from .auth import RedactQueryTokens
from .settings import ApiSettings


def main(argv: list[str] | None = None) -> None:
    settings = load(ApiSettings, "kresize-api")
    parser = argparse.ArgumentParser(prog="kresize-api", description=__doc__)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    args = parser.parse_args(argv)
    logs.setup(settings.log_format)
    logging.getLogger("uvicorn.access").addFilter(RedactQueryTokens())
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    from .app import create_app  # after logging is set up: the app logs while it is made

    # log_config=None: uvicorn's own and its access lines go through the handler set up above.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", proxy_headers=True,
                log_config=None)
    logging.shutdown()


if __name__ == "__main__":
    main()
