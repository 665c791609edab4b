"""requirements.lock (pip) and environment.yml (conda) pin the same packages and versions."""

import pytest

from pmed import lockfile


def test_environment_yml_matches_lock():
    python, env_pins = lockfile.environment_pins()
    lock = lockfile.lock_pins()
    assert python == lockfile.PYTHON
    assert set(env_pins) == set(lock), set(env_pins) ^ set(lock)
    differ = {n: (lock[n], env_pins[n]) for n in lock if lock[n] != env_pins[n]}
    assert not differ, f"versions differ (lock, environment.yml): {differ}"


def test_core_packages_are_locked():
    lock = lockfile.lock_pins()
    for name in ["jupyterlab", "papermill", "dvc", "pandas", "statsmodels", "lifelines",
                 "scikit-learn", "matplotlib", "nbval", "duckdb", "pydicom", "simpleitk"]:
        assert name in lock, name


def test_parse_pins_rejects_unpinned_line():
    with pytest.raises(ValueError, match="expected 'name==version'"):
        lockfile.parse_pins(["pandas>=2"], "x.txt")
    assert lockfile.parse_pins(["Foo_Bar==1.0", "# c", ""], "x") == {"foo-bar": "1.0"}
