"""`python -m exo_operator` is `exo-operator`."""

from exo_operator.cli import main

raise SystemExit(main())
