"""The run pipeline: a validated recipe in, a complete run directory out.

Owns the steps of a run (`run`): data preparation (`data`), tokenization and its cache
(`encoding`), batching (`collate`, `packing`), the run directory and its atomic writes (`rundir`),
checkpoints, signals, events for reporters, the environment record, model helpers (`modeling`)
and Hub access (`hub`). May import the public API, `recipe`, `plugins`, `evaluation`, `report`
and `distributed`'s process-group helpers.
"""
