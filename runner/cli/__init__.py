"""The command line: `finetune` and its commands.

Owns argument parsing (`main`), one function per command (`commands`), and the commands that are
more than a call into the pipeline: `plan`, `saved` (predict/export from a finished run),
`reaudit`, `scaffold` (`finetune new`) and `reference` (the generated recipe reference).
May import every other wing; nothing imports it but the entry point. `--help` and `validate`
import no torch: heavy imports stay inside the command functions.
"""

from runner.cli.main import main

__all__ = ["main"]
