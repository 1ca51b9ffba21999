"""The ``Example:`` blocks of ``AFMRLConfig`` and ``AFMRLModel`` run as written (doctest)."""

from __future__ import annotations

import doctest

import pytest


def _run_examples(obj) -> doctest.TestResults:
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(obj, obj.__name__, globs={})
    assert tests and tests[0].examples, f"{obj.__name__} has no Example block"
    for test in tests:
        runner.run(test)
    return runner.summarize(verbose=False)


def test_config_example_runs():
    from modeling_afmrl import AFMRLConfig

    result = _run_examples(AFMRLConfig)
    assert result.failed == 0 and result.attempted >= 4


@pytest.mark.slow
def test_model_example_runs():
    from modeling_afmrl import AFMRLModel

    result = _run_examples(AFMRLModel)
    assert result.failed == 0 and result.attempted >= 10
