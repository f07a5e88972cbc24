"""The front door: loading a recipe, planning it, running or resuming it, opening a finished run.

Everything that starts or reads a run comes through here: the command line (runner/cli only parses
arguments and prints), sweeps (runner/sweep), the plugin test kit (runner/testing), bench/, and a
notebook or an orchestrator through the Python API that `runner` exports (docs/python-api.md).
Owns loading and validating (`recipes`), the `--locked` check (`locking`), creating, running and
resuming a run directory (`starting`), what a run plans to do (`planning`) and finished runs
(`finished`). May import every wing below the CLI and the sweep: the public API, `recipe`,
`plugins`, `toolkit`, `storage`, `distributed`, `evaluation`, `report` and `pipeline` (those that
import torch, inside the functions that train or load models, so that `import runner` stays light).
"""
