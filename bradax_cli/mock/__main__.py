"""`python -m bradax_cli.mock`: serve the mock upstream."""

from bradax_cli.mock.server import main

raise SystemExit(main())
