"""`python -m sandboxd`: the command line (sandboxd.app.cli)."""

from sandboxd.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
