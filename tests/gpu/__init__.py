# A package, so that tests/gpu/conftest.py imports as `gpu.conftest` and does
# not replace `conftest` (tests/conftest.py) in sys.modules, which the test
# modules of tests/ import their helpers from.
