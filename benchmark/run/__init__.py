"""Running a benchmark: `config` (RunConfig), `cells` (planning, one cell's work),
`batching`, `allocator`, `executors` (local, Ray), `runner` (skip stored cells, store the
rest) and `session` (a whole run as one call: the API's and the CLI's `run`).

This package is also that function: `benchmark.run(models=..., attacks=...)` calls
`benchmark.run.session.run`. A function cannot simply be bound as `benchmark.run`, because
importing this package rebinds that name to the package; so the package itself is made
callable (its module class, the way the language reference shows for customising modules).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from benchmark.run.session import run

        return run(*args, **kwargs)

    @property
    def __signature__(self) -> Any:  # inspect.signature shows the function's
        import inspect

        from benchmark.run.session import run

        return inspect.signature(run)


sys.modules[__name__].__class__ = _CallablePackage
