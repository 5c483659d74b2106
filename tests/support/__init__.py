"""Helpers shared by the tests (plain modules, not tests): the only part of tests/ a test module imports."""
