"""One module per ``wapipe`` subcommand (see shared/cli.py)."""
