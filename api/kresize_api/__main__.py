"""`kresize-api`: serve the upload API with uvicorn (KRESIZE_API_HOST / KRESIZE_API_PORT)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import ApiSettings


def main(argv: list[str] | None = None) -> None:
    settings = ApiSettings.from_env()
    parser = argparse.ArgumentParser(prog="kresize-api", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", proxy_headers=True)


if __name__ == "__main__":
    main()
