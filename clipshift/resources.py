"""Where the SQL and migration files live, in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder `sql` or `migrations`.

    The wheel maps the top-level folders into the package (clipshift/sql, clipshift/migrations);
    a source checkout or an editable install has them beside the package.
    """
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"clipshift is missing its {name}/ folder (broken install?)")
