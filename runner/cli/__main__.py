"""`python -m runner.cli` runs `finetune`."""

import sys

from runner.cli.main import main

sys.exit(main())
