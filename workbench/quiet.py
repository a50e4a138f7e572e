"""Importing this quiets known third-party noise in this process (workbench.console.quiet_third_party).

For processes that import libraries without running the CLI first: the stage server of `workbench compare`
(workbench.stageproc) imports it before DeepSpeed and transformers, whose import-time lines would otherwise
reach the comparison's console.
"""

from workbench.console import quiet_third_party

quiet_third_party()
