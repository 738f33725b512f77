"""The one Jinja environment of the HTML reports: templates from report/templates/.

Autoescaping is on for every template, so a model or attack name can never inject markup.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def environment() -> Any:
    """Loads from the installed package, not the working directory; undefined names raise."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("benchmark.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
