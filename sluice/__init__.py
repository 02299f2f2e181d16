"""The composition root: the `sluice` command line, the demo, the server wiring and the dev setup.

They put the other packages together (the control plane, engines, telemetry, replay, the
console), so they live here and nothing else imports them (an import contract in pyproject.toml);
only the `sluice` entry point, the tests and the benchmarks do.
"""
