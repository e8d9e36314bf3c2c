"""The kresize command-line client (see kresize_cli.main)."""
