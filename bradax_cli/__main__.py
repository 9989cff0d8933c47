"""`python -m bradax_cli`: the `bradax` command."""

from bradax_cli.cli import main

raise SystemExit(main())
