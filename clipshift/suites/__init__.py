"""Perturbation suites: what `--augmentations` chooses, behind one interface.

A **suite** is a named list of entries; an entry is one perturbation, optionally at graded
severities. Expanded, a suite is a list of `Perturbation`s, one per stored variant:

- `name`        the perturbation (the `augmentation` column of shifts and summary)
- `severity`    1..N where the entry has severity levels, else None (the `severity` column)
- `label`       the stored `variant`: `name`, or `name@severity`
- `definition`  the JSON entry recorded in `runs.augmentations` and hashed into the run_id;
                enough to rebuild the transform (`Perturbation.from_definition`)
- `prompt`      a text describing the perturbed photo, against the neutral base `BASE_PROMPT`
                ("a photo"): "a blurry photo", "a foggy photo", ...
- `transform()` a fresh albumentations transform

Built in: `paper` (the default; the paper's nine, whose definitions are exactly what runs stored
before suites existed, so old run_ids stand) and `corruptions` (the 15 ImageNet-C corruptions
x 5 severities, clipshift/suites/corruptions.py). A user suite is a YAML or JSON file:

    suite: my-suite                    # optional
    perturbations:
      - name: fog                      # letters, digits, _ . - (no @)
        prompt: a foggy photo          # optional; default "a perturbed photo"
        transform: {...}               # what A.to_dict(transform) writes (or its "transform")
        severities:                    # optional: one mapping of parameter overrides per level
          - {strength: 1.5}
          - {strength: 3.0}

`clipshift suites --show NAME` prints a built-in suite in that format.

Prompt API (zero-shot text directions read it): `prompt_for(source, name)` where `source` is
a run (clipshift.runs.Run, or a runs row as a dict with `augmentations`), a suite spec
("paper,corruptions", a file path) or a list of Perturbations, and `name` a perturbation name
or variant label; `BASE_PROMPT` is the neutral prompt they are compared with.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import ClipshiftError
from ..defaults import DEFAULT_SUITE
from .paper import PAPER, paper_transform

# albumentations is imported where a transform is built or serialised, not to resolve the
# default suite: see clipshift/suites/paper.py
if TYPE_CHECKING:
    import albumentations as A

    from ..runs import Run  # runs sits above the suites: named for the type only

BASE_PROMPT = "a photo"
DEFAULT_PROMPT = "a perturbed photo"


@dataclass(frozen=True)
class Perturbation:
    """One stored variant: a transform, at one severity where the entry has levels."""

    name: str
    severity: int | None
    definition: dict = field(compare=False)
    prompt: str = DEFAULT_PROMPT

    @property
    def label(self) -> str:
        return self.name if self.severity is None else f"{self.name}@{self.severity}"

    def transform(self) -> A.BasicTransform:
        return build_transform(self.definition)

    @classmethod
    def from_definition(cls, definition: dict) -> Perturbation:
        """Rebuild from a stored definition (an element of runs.augmentations)."""
        name = definition["name"]
        prompt = definition.get("prompt") or _builtin_prompt(name)
        return cls(name, definition.get("severity"), definition, prompt)


@dataclass(frozen=True)
class Entry:
    """A suite entry: a transform, with optional severity levels (parameter overrides)."""

    name: str
    prompt: str
    # A.to_dict(...)["transform"]; None for the paper's, whose `stored` definition is its call
    # as text (`serialised` builds it)
    transform: dict | None
    severities: tuple[dict, ...] | None = None
    stored: dict | None = None  # the paper's legacy stored definition (run identity)

    def serialised(self) -> dict:
        """The transform as A.to_dict writes it."""
        if self.transform is not None:
            return self.transform
        return _to_dict(paper_transform(self.name))

    def perturbations(self) -> list[Perturbation]:
        if self.severities is None:
            definition = self.stored or {
                "name": self.name,
                "prompt": self.prompt,
                "transform": self.transform,
                "albumentations": albumentations_version(),
            }
            return [Perturbation(self.name, None, definition, self.prompt)]
        return [
            Perturbation(
                self.name,
                level,
                {
                    "name": self.name,
                    "severity": level,
                    "prompt": self.prompt,
                    "transform": {**self.transform, **overrides},
                    "albumentations": albumentations_version(),
                },
                self.prompt,
            )
            for level, overrides in enumerate(self.severities, start=1)
        ]

    def document(self) -> dict:
        """The entry as a suite file writes it."""
        out = {"name": self.name, "prompt": self.prompt, "transform": self.serialised()}
        if self.severities is not None:
            out["severities"] = [dict(s) for s in self.severities]
        return out


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    entries: tuple[Entry, ...]

    def perturbations(self) -> list[Perturbation]:
        return [p for entry in self.entries for p in entry.perturbations()]

    def document(self) -> dict:
        """The suite in the user-file format (what `clipshift suites --show` prints)."""
        return {
            "suite": self.name,
            "description": self.description,
            "albumentations": albumentations_version(),
            "perturbations": [entry.document() for entry in self.entries],
        }


@functools.cache
def albumentations_version() -> str:
    """The installed albumentations' version, as its `__version__` gives it, read without
    importing it; part of every stored definition (read once: 1.3 ms a read here, and the
    corruptions suite has 75 definitions)."""
    try:
        return importlib.metadata.version("albumentations")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _to_dict(transform: A.BasicTransform) -> dict:
    import albumentations as A

    return json.loads(json.dumps(A.to_dict(transform)["transform"]))


def _paper_suite() -> Suite:
    entries = []
    for name, (call, prompt) in PAPER.items():
        stored = {"name": name, "transform": call, "albumentations": albumentations_version()}
        entries.append(Entry(name, prompt, None, None, stored))
    return Suite(
        "paper", "the nine augmentations of the paper, one strength each (default)", tuple(entries)
    )


def _corruptions_suite() -> Suite:
    from . import corruptions

    entries = []
    for name, (prompt, cls, levels) in corruptions.TABLES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = _to_dict(cls(**levels[0], p=1.0))
        entries.append(Entry(name, prompt, base, tuple(levels)))
    return Suite(
        "corruptions",
        "the 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) at severities 1-5",
        tuple(entries),
    )


# name -> how it is built: once per process, on first use (the corruptions import
# albumentations, the paper's do not)
_BUILDERS: dict[str, Callable[[], Suite]] = {
    "paper": _paper_suite,
    "corruptions": _corruptions_suite,
}
_BUILT: dict[str, Suite] = {}


def builtin_suite(name: str) -> Suite:
    if name not in _BUILDERS:
        raise ClipshiftError(f"no built-in suite {name!r}: one of {', '.join(_BUILDERS)}")
    if name not in _BUILT:
        _BUILT[name] = _BUILDERS[name]()
    return _BUILT[name]


def builtin_suites() -> dict[str, Suite]:
    """name -> Suite, every built-in one."""
    return {name: builtin_suite(name) for name in _BUILDERS}


def _in_turn() -> Iterator[Suite]:
    """The built-in suites one by one, each built when reached: a search that ends in the
    paper's never builds the others."""
    return (builtin_suite(name) for name in _BUILDERS)


def _builtin_prompt(name: str) -> str:
    for suite in _in_turn():
        for entry in suite.entries:
            if entry.name == name:
                return entry.prompt
    return DEFAULT_PROMPT


def build_transform(definition: dict) -> A.BasicTransform:
    """The albumentations transform of a stored definition."""
    transform = definition["transform"]
    if isinstance(transform, str):  # the paper's legacy form: the call as text
        return paper_transform(definition["name"])
    import albumentations as A

    from . import corruptions  # noqa: F401 - registers the clipshift.* transforms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return A.from_dict({"transform": transform})


# -- choosing: --augmentations -----------------------------------------------------------------


def resolve(spec: str | Sequence[str] | None) -> list[Perturbation]:
    """The perturbations of `--augmentations`: a comma list (or a sequence) of built-in suite
    names (`paper`, `corruptions`; `all` means paper), suite files (.yaml/.yml/.json),
    perturbation names of a built-in suite (`fog`: all its severities) or variant labels
    (`fog@3`). None means the paper suite. A label named twice is kept once."""
    if spec is None:
        return builtin_suite(DEFAULT_SUITE).perturbations()
    items = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    items = [n for n in items if n]
    if not items:
        raise ClipshiftError("--augmentations is empty: name at least one, or leave it out")
    chosen: dict[str, Perturbation] = {}
    for item in items:
        for perturbation in _resolve_item(item):
            earlier = chosen.get(perturbation.label)
            if earlier is not None and earlier.definition != perturbation.definition:
                raise ClipshiftError(
                    f"--augmentations: {perturbation.label} is defined twice, differently "
                    f"(in {item!r} and before it): rename one"
                )
            chosen.setdefault(perturbation.label, perturbation)
    return list(chosen.values())


def spec_items(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """`spec` as plain, hashable settings that `resolve` turns into the same perturbations in
    any process: its comma items, suite files as absolute paths; None is the default suite."""
    if spec is None:
        return (DEFAULT_SUITE,)
    items = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    return tuple(
        str(Path(n).resolve()) if n.lower().endswith(SUITE_FILE_SUFFIXES) else n for n in items if n
    )


def _resolve_item(item: str) -> list[Perturbation]:
    if item == "all":
        item = DEFAULT_SUITE
    if item in _BUILDERS:
        return builtin_suite(item).perturbations()
    if item.lower().endswith(SUITE_FILE_SUFFIXES):
        return load_suite_file(item).perturbations()
    for suite in _in_turn():
        found = [p for p in suite.perturbations() if item in (p.name, p.label)]
        if found:
            return found
    suites = builtin_suites()
    name, at, level = item.partition("@")
    entry = next((e for s in suites.values() for e in s.entries if e.name == name), None)
    if at and entry is not None:
        if entry.severities is None:
            raise ClipshiftError(f"{item}: {name} has no severities: name it without @")
        raise ClipshiftError(
            f"{item}: severity must be one of 1-{len(entry.severities)} ({name}@1 ... "
            f"{name}@{len(entry.severities)}, or {name} for all)"
        )
    names = [e.name for s in suites.values() for e in s.entries]
    raise ClipshiftError(
        f"unknown augmentation {item}: give a suite ({', '.join(suites)}), a suite file "
        f"(.yaml, .json), or one of {', '.join(names)}"
    )


def perturbations_of_run(run: Run | dict) -> list[Perturbation]:
    """The perturbations a run was ingested with, from its stored definitions. `run` is a
    clipshift.runs.Run or a runs row as a dict."""
    stored = run["augmentations"] if isinstance(run, dict) else run.augmentations
    return [Perturbation.from_definition(d) for d in json.loads(stored)]


def prompt_for(source: Run | dict | str | Sequence[Perturbation], name: str) -> str:
    """The prompt describing a photo perturbed by `name` (a perturbation name or a variant
    label such as "fog@3"); `source` is a run (a Run or a runs row dict), a suite spec, or a
    list of Perturbations.
    Compare it with BASE_PROMPT ("a photo")."""
    if isinstance(source, str):
        perturbations = resolve(source)
    elif isinstance(source, dict) or hasattr(source, "augmentations"):
        perturbations = perturbations_of_run(source)
    else:
        perturbations = list(source)
    for perturbation in perturbations:
        if name in (perturbation.name, perturbation.label):
            return perturbation.prompt
    raise ClipshiftError(
        f"no perturbation {name!r} here: {', '.join(dict.fromkeys(p.name for p in perturbations))}"
    )


# -- clipshift suites ------------------------------------------------------------------------


def suites() -> list[Suite]:
    """The built-in suites (`clipshift suites`)."""
    return list(builtin_suites().values())


def show(name: str, fmt: str = "yaml") -> str:
    """A built-in suite (or a suite file, validated) as a suite file in `fmt` (yaml or json):
    what `clipshift suites --show NAME` prints, to copy and edit."""
    if name.lower().endswith(SUITE_FILE_SUFFIXES):
        suite = load_suite_file(name)
    else:
        suite = builtin_suite(name)
    document = suite.document()
    if fmt == "json":
        return json.dumps(document, indent=2)
    import yaml

    header = (
        f"# clipshift suite {suite.name}: ingest a copy with --augmentations FILE.yaml\n"
        "# each transform is albumentations' A.to_dict serialisation; severities: one mapping\n"
        "# of parameter overrides per level\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=100)


# the suite-file parser (clipshift/suites/files.py) builds the Entry and Suite defined above,
# so it is imported once they exist
from .files import SUITE_FILE_SUFFIXES, load_suite_file  # noqa: E402
