"""User suite files: a YAML or JSON file of perturbations (the format `clipshift suites --show`
writes, described in clipshift/suites/__init__.py), parsed and validated entry by entry."""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path

from .. import ClipshiftError
from ..defaults import ORIGINAL
from . import DEFAULT_PROMPT, Entry, Suite

SUITE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def load_suite_file(path: str | os.PathLike) -> Suite:
    """A user suite from a YAML or JSON file, validated entry by entry: any problem is one
    ClipshiftError naming the file, the entry and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ClipshiftError(f"suite file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(text)
        else:
            import yaml

            document = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - a parse error, said on one line
        message = " ".join(str(exc).split())
        raise ClipshiftError(f"suite file {path}: not valid {path.suffix[1:]}: {message}") from None
    if isinstance(document, dict):
        raw = document.get("perturbations")
        suite_name = str(document.get("suite") or path.stem)
        description = str(document.get("description") or f"user suite {path}")
    else:
        raw, suite_name, description = document, path.stem, f"user suite {path}"
    if not isinstance(raw, list) or not raw:
        raise ClipshiftError(
            f"suite file {path}: expected a non-empty list `perturbations:` of entries"
        )
    entries, seen = [], set()
    for index, item in enumerate(raw, start=1):
        entry = _entry(item, index, lambda what, i=index, item=item: _fail(path, i, item, what))
        if entry.name in seen:
            _fail(path, index, item, f"name {entry.name!r} is used by an earlier entry")
        seen.add(entry.name)
        entries.append(entry)
    return Suite(suite_name, description, tuple(entries))


def _fail(path: Path, index: int, item, what: str):
    name = item.get("name") if isinstance(item, dict) else None
    where = f"entry {index}" + (f" ({name})" if isinstance(name, str) else "")
    raise ClipshiftError(f"suite file {path}: {where}: {what}")


def _entry(item, index: int, fail) -> Entry:
    if not isinstance(item, dict):
        fail("an entry is a mapping with name, transform, and optionally prompt and severities")
    unknown = set(item) - {"name", "prompt", "transform", "severities"}
    if unknown:
        fail(f"unknown key {', '.join(sorted(unknown))} (use name, prompt, transform, severities)")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or name == ORIGINAL:
        fail(f"name {name!r}: give letters, digits, _ . - (not 'original', no @)")
    prompt = item.get("prompt", DEFAULT_PROMPT)
    if not isinstance(prompt, str) or not prompt.strip():
        fail("prompt must be a non-empty text")
    transform = item.get("transform")
    if isinstance(transform, dict) and "__class_fullname__" not in transform:
        transform = transform.get("transform")  # the whole of A.to_dict's output
    if not isinstance(transform, dict) or "__class_fullname__" not in transform:
        fail("transform must be albumentations' serialisation (A.to_dict) of one transform")
    transform = {"p": 1.0, **transform}
    from albumentations.core.serialization import SERIALIZABLE_REGISTRY

    from . import corruptions  # noqa: F401 - registers the clipshift.* transforms

    cls_name = str(transform["__class_fullname__"])
    cls = SERIALIZABLE_REGISTRY.get(cls_name) or SERIALIZABLE_REGISTRY.get(
        cls_name.rsplit(".", 1)[-1] if cls_name.startswith("albumentations.") else cls_name
    )
    if cls is None:
        fail(f"unknown transform {cls_name!r}")
    accepted = _init_parameters(cls)
    _check_keys(transform, accepted, cls_name, fail)
    severities = item.get("severities")
    if severities is not None:
        if not isinstance(severities, list) or not severities:
            fail(
                "severities must be a non-empty list with one mapping of parameter overrides "
                "per level"
            )
        for level, overrides in enumerate(severities, start=1):
            if not isinstance(overrides, dict):
                fail(
                    f"severity {level} is {overrides!r}: each level must be a mapping of "
                    "parameter overrides, e.g. {std_range: [0.1, 0.1]}"
                )
            _check_keys(overrides, accepted, cls_name, fail, f"severity {level}: ")
        severities = tuple(dict(s) for s in severities)
    entry = Entry(name, prompt.strip(), transform, severities)
    for perturbation in entry.perturbations():
        at = "" if perturbation.severity is None else f"severity {perturbation.severity}: "
        try:
            perturbation.transform()
        except Exception as exc:  # noqa: BLE001 - the transform's own validation message
            message = " ".join(str(exc).split())
            fail(f"{at}bad parameter for {cls_name}: {message[:300]}")
    return entry


def _init_parameters(cls) -> set[str]:
    names: set[str] = {"p"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                names.add(parameter.name)
    return names - {"self", "always_apply"}


def _check_keys(params: dict, accepted: set[str], cls_name: str, fail, at: str = "") -> None:
    unknown = sorted(set(params) - accepted - {"__class_fullname__"})
    if unknown:
        fail(
            f"{at}bad parameter {', '.join(unknown)} for {cls_name}: it takes "
            f"{', '.join(sorted(accepted - {'strict'}))}"
        )
