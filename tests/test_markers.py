"""The marker policy of tests/conftest.py, checked by running a small test file under it:
``gpu`` tests skip without CUDA (or without torch), ``network`` tests skip unless asked
for (``--run-network`` or ``TDA_RUN_NETWORK=1``), ``slow`` and ``browser`` tests run."""

from __future__ import annotations

import configparser
import sys
import types
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

# One test per marker, and one with both gpu and network; every body passes, so a test
# either passes or was skipped by the hooks.
MARKED = """
import pytest

def test_plain():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.browser
def test_browser():
    pass

@pytest.mark.gpu
def test_gpu():
    pass

@pytest.mark.network
def test_network():
    pass

@pytest.mark.gpu
@pytest.mark.network
def test_gpu_and_network():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester folder holding this repository's conftest.py, its marker declarations
    (from setup.cfg, with --strict-markers) and MARKED as test_marked.py."""
    monkeypatch.delenv("TDA_RUN_NETWORK", raising=False)
    ini = configparser.ConfigParser()
    ini.read(TESTS.parent / "setup.cfg")
    markers = ini["tool:pytest"]["markers"]
    # hypothesis's plugin imports hypothesis at the end of a run, and pytester drops the
    # modules a run imported: it would import it again for every run (2-3 s each).
    pytester.makeini(
        "[pytest]\naddopts = --strict-markers -p no:cacheprovider -p no:hypothesispytest\n"
        "markers =\n" + "".join(f"    {line}\n" for line in markers.strip().splitlines())
    )
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_marked=MARKED)
    return pytester


def _cuda(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    """Makes ``import torch`` in the hooks return a stand-in whose CUDA is ``available``.
    A stand-in, not the real torch patched: pytester drops the modules a test imported
    when it ends, and importing torch a second time in one process crashes it."""
    cuda = types.SimpleNamespace(is_available=lambda: available)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))


def _outcomes(result: pytest.HookRecorder) -> tuple[list[str], list[str]]:
    """(passed, skipped) test names of an inline run."""
    reports = result.getreports("pytest_runtest_logreport")
    passed = sorted(r.head_line for r in reports if r.when == "call" and r.passed)
    skipped = sorted(r.head_line for r in reports if r.skipped)
    return passed, skipped


def _reasons(result: pytest.HookRecorder) -> dict[str, str]:
    """Skipped test name -> the reason the skip marker gave."""
    return {
        r.head_line: r.longrepr[2].removeprefix("Skipped: ")
        for r in result.getreports("pytest_runtest_logreport")
        if r.skipped
    }


def test_without_cuda_or_request_gpu_and_network_tests_skip(suite, monkeypatch):
    _cuda(monkeypatch, False)
    result = suite.inline_run("-rs")
    result.assertoutcome(passed=3, skipped=3)
    passed, skipped = _outcomes(result)
    assert passed == ["test_browser", "test_plain", "test_slow"]
    assert skipped == ["test_gpu", "test_gpu_and_network", "test_network"]
    reasons = _reasons(result)
    assert reasons["test_gpu"] == "needs a CUDA GPU (torch.cuda.is_available() is False)"
    assert reasons["test_network"].startswith("needs network access: pass --run-network")


def test_with_cuda_gpu_tests_run(suite, monkeypatch):
    _cuda(monkeypatch, True)
    result = suite.inline_run()
    result.assertoutcome(passed=4, skipped=2)
    assert _outcomes(result)[1] == ["test_gpu_and_network", "test_network"]


def test_without_torch_gpu_tests_skip(suite, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    result = suite.inline_run("--run-network")
    result.assertoutcome(passed=4, skipped=2)
    assert _outcomes(result)[1] == ["test_gpu", "test_gpu_and_network"]
    assert set(_reasons(result).values()) == {"needs torch with CUDA (torch is not installed)"}


@pytest.mark.parametrize(
    "args, env",
    [(["--run-network"], None), ([], "1"), ([], "true")],
    ids=["option", "env-1", "env-true"],
)
def test_network_tests_run_on_request(suite, monkeypatch, args, env):
    _cuda(monkeypatch, False)
    if env is not None:
        monkeypatch.setenv("TDA_RUN_NETWORK", env)
    result = suite.inline_run(*args)
    result.assertoutcome(passed=4, skipped=2)
    assert _outcomes(result) == (
        ["test_browser", "test_network", "test_plain", "test_slow"],
        ["test_gpu", "test_gpu_and_network"],
    )


@pytest.mark.parametrize("env", ["0", ""])
def test_network_env_other_values_keep_the_skip(suite, monkeypatch, env):
    _cuda(monkeypatch, True)
    monkeypatch.setenv("TDA_RUN_NETWORK", env)
    result = suite.inline_run()
    result.assertoutcome(passed=4, skipped=2)
    assert _outcomes(result)[1] == ["test_gpu_and_network", "test_network"]


def test_strict_markers_reject_an_undeclared_marker(suite):
    suite.makepyfile(test_typo="import pytest\n\n@pytest.mark.gpuu\ndef test_x():\n    pass\n")
    result = suite.runpytest("test_typo.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'gpuu' not found in `markers` configuration option*"])


HANGS = """
import threading

def test_waits_on_a_thread_forever():
    worker = threading.Thread(target=threading.Event().wait)  # never set, never daemon
    worker.start()
    worker.join()
"""


def test_the_timeout_ends_a_hung_run_with_every_threads_stack(pytester):
    """setup.cfg's timeout method on a test whose main thread waits on a worker thread
    forever (as a hung Beam DirectRunner pipeline does): the run ends, the report names
    the test and shows the worker's stack. The timeout itself is 1 s here."""
    ini = configparser.ConfigParser()
    ini.read(TESTS.parent / "setup.cfg")
    section = ini["tool:pytest"]
    assert int(section["timeout"]) >= 60  # far above the slowest test (see setup.cfg)
    pytester.makepyfile(test_hangs=HANGS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--timeout=1", f"--timeout-method={section['timeout_method']}",
        timeout=60,
    )  # fmt: skip
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*Timeout*"])
    out = result.stdout.str() + result.stderr.str()
    assert "test_waits_on_a_thread_forever" in out
    assert "Stack of Thread-" in out  # the worker's stack, not only the main thread's
