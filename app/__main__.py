"""`python -m app …`: the command line in `app/cli/commands.py`."""

import os

from app.cli.commands import cli

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
