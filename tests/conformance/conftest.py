"""pytest wiring for the conformance gate (independent of tests/conftest.py)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "conformance: runs CPython's own test_asyncio against the loop under test"
    )
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): pytest-timeout limit")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    summary = getattr(config, "_conformance_summary", None)
    if summary:
        terminalreporter.write_sep("=", "test_asyncio conformance")
        terminalreporter.write_line(summary)
