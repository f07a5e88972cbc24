"""`finetune lock RECIPE`: write the recipe's lock and say what it pinned.

The lock itself (what it records, how two are compared) is runner.recipe.lockfile; computing and
checking it is the front door's (runner/running/locking.py). No torch is imported: `lock` and
`validate --locked` stay fast.
"""

from __future__ import annotations

from runner.errors import format_key
from runner.recipe import lockfile
from runner.running.locking import write_lock
from runner.running.recipes import load_recipe


def cmd_lock(args) -> int:
    path, lock = write_lock(load_recipe(args.recipe, args.overrides))
    entries = dict(lockfile.input_leaves(lock["inputs"]))
    unresolved = {key: value for key, value in entries.items() if lockfile.is_unresolved(value)}
    pinned = sum(key[-1] == "revision" for key in entries) - len(unresolved)
    # a hash of a file or folder, or one of the files a data source's fingerprint hashes
    hashed = sum("sha256" in str(key[-1]) or "files" in key[:-1] for key in entries)
    print(f"wrote {path}: {pinned} Hub revision(s) pinned, {hashed} hash(es), {len(lock['versions'])} distribution(s)")
    for key, value in unresolved.items():
        hub_id = entries.get((*key[:-1], "hub"), "")
        shown = format_key(key[:-1])
        print(f"  {shown}: '{hub_id}' {value}: lock again with the Hub reachable to pin it")
    return 0
