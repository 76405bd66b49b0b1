"""The command line itself: `python -m clipshift` runs it, and its choices are the library's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np

from cli import cli
from clipshift import check, defaults, first_line, formatting, report, zeroshot
from clipshift.ingest import ENGINES
from clipshift.knn import normalise

ROOT = Path(__file__).resolve().parent.parent

# (command, option) -> the library's own names that option offers; every click.Choice of the
# CLI is here, so a retyped list fails this table rather than drifting from the library
CHOICES = {
    ("ingest", "device"): defaults.DEVICES,
    ("ingest", "precision"): defaults.PRECISIONS,
    ("suites", "fmt"): defaults.SUITE_FORMATS,
    ("check", "repair"): check.REPAIRS,
    ("stats", "part"): defaults.STATS_PARTS,
    ("stats", "fmt"): formatting.FORMATS,
    ("compare", "fmt"): formatting.FORMATS,
    ("sql", "fmt"): defaults.SQL_FORMATS,
    ("clusters", "method"): defaults.LINKAGE_METHODS,
    ("neighbors", "among"): defaults.AMONG,
    ("neighbors", "device"): defaults.DEVICES,
    ("neighbors", "fmt"): formatting.FORMATS,
    ("retrieval", "fmt"): formatting.FORMATS,
    ("report", "fmt"): report.FIGURE_FORMATS,
    ("zeroshot", "device"): defaults.DEVICES,
    ("zeroshot", "fmt"): formatting.FORMATS,
    ("directions", "device"): defaults.DEVICES,
    ("directions", "fmt"): formatting.FORMATS,
    ("ingest", "engine"): tuple(ENGINES),
    ("ingest", "labels_from"): defaults.LABELS_FROM,
    ("ingest", "label_key"): defaults.LABEL_KEYS,
    ("layers", "fmt"): formatting.FORMATS,
    ("accuracy", "fmt"): formatting.FORMATS,
    ("accuracy", "device"): defaults.DEVICES,
}


def test_python_m_clipshift_runs_the_same_command_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "clipshift", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: python -m clipshift")
    for command in cli.commands:
        assert command in done.stdout


def test_every_choice_is_the_librarys_own_tuple():
    found = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param.type, click.Choice):
                found[(name, param.name)] = tuple(param.type.choices)
    assert set(found) == set(CHOICES)
    for key, expected in CHOICES.items():
        assert found[key] == tuple(expected), key


def test_zeroshot_defaults_are_the_librarys():
    params = {p.name: p for p in cli.commands["zeroshot"].params}
    assert params["labels"].default == zeroshot.DEFAULT_LABELS in zeroshot.LABEL_SETS
    assert params["template"].default == zeroshot.DEFAULT_TEMPLATE


def test_first_line_of_an_error():
    assert first_line(ValueError("bad thing\n  at line 2\n")) == "bad thing"
    assert first_line(ValueError("bad thing\nmore"), typed=True) == "ValueError: bad thing"
    assert first_line(ValueError()) == "ValueError"
    assert first_line(ValueError("  "), typed=True) == "ValueError"


def test_normalise_keeps_a_zero_vector_zero():
    unit = normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(normalise(np.array([0.0, 2.0]), np.float64), [0.0, 1.0])
