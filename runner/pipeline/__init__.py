"""The run pipeline: a validated recipe in, a complete run directory out.

Owns running a recipe (`run`: status, reporters, lifecycle hooks) and its steps in order
(`steps`, with the data side in `preparing`): data loading and splitting (`data`), tokenization
and its cache (`encoding`), packing, graceful stops (`signals`), events for reporters (`events`)
and the environment record (`environment`). May import every wing but `cli`: the public API,
`recipe`, `plugins`, `toolkit`, `storage`, `distributed`, `evaluation` and `report`.
"""
