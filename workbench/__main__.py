"""`python -m workbench` (what `accelerate launch -m workbench` runs)."""

from workbench.cli import main

raise SystemExit(main())
