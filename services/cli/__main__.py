"""`python -m services.cli`: the `cdb` command."""

from services.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
