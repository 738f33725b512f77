"""The engine of a run: `config` (RunConfig), `cells` (planning, one model group's cells),
`batching`, `allocator`, `executors` (local, Ray), `runner` (skip stored cells, store the
rest) and `session` (a whole run as one call: the API's `benchmark.run` and the CLI's `run`).

Named `engine`, not `run`, so that `benchmark.run` can be the API's plain function.
"""
