"""The ``deploy`` marker: tests that bring services up for real (``make test-deploy``)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "deploy: brings the facility set-up up for real (run by make test-deploy)"
    )
