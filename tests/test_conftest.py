"""The suite's own rule (tests/conftest.py): under CI a skip fails; elsewhere it stays a skip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SKIPPING = """
import pytest

def test_skips_as_it_runs():
    pytest.skip("Chromium is not installed")

def test_misses_an_extra():
    pytest.importorskip("vitkit_no_such_extra")

@pytest.mark.skipif(True, reason="marked")
def test_marked():
    pass

@pytest.mark.xfail(reason="expected to fail", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""
SKIPPED_MODULE = """
import pytest

pytest.importorskip("vitkit_no_such_extra")

def test_never_collected():
    pass
"""


def test_every_kind_of_skip_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Outside CI the same skips stay skips: pytest's own behaviour, which the rule leaves alone when
    :func:`skips_fail` says no; see the next test.)"""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_skipping=SKIPPING, test_skipped_module=SKIPPED_MODULE)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors")
    # two tests fail as they run, the marked one as it is set up, the module as it is collected; xfail stays xfail
    result.assert_outcomes(passed=1, failed=2, errors=2, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped under CI, where nothing may be skipped: *Chromium is not installed*"])


@pytest.mark.parametrize(("ci", "fails"), [("true", True), ("1", True), ("TRUE", True), ("0", False), ("no", False)])
def test_what_counts_as_ci(monkeypatch: pytest.MonkeyPatch, ci: str, fails: bool) -> None:
    spec = importlib.util.spec_from_file_location("suite_conftest", Path(__file__).parent / "conftest.py")
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)  # this folder's conftest, not a subfolder's of the same module name
    skips_fail = rules.skips_fail
    monkeypatch.setenv("CI", ci)
    assert skips_fail() is fails
    monkeypatch.delenv("CI")
    assert not skips_fail()
