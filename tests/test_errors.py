"""Every error the package raises on purpose is an S2OError, and the CLI maps it in one place (cli.S2OGroup):
`error: <message>` on stderr, no traceback, the class's exit code, also through CliRunner (which bypasses main())."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from typer.testing import CliRunner

import s2o_platform
from s2o_platform.cli import app
from s2o_platform.errors import S2OError

runner = CliRunner()


def package_exceptions() -> dict[str, type[BaseException]]:
    """module.Class -> class, for every exception class defined in a module of the package (all imported)."""
    found = {}
    for info in pkgutil.walk_packages(s2o_platform.__path__, prefix="s2o_platform."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_error_class_of_the_package_is_an_s2o_error():
    found = package_exceptions()
    assert "s2o_platform.bundle.BundleError" in found and "s2o_platform.config.ConfigError" in found, sorted(
        found
    )
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, S2OError))
    assert not outside, f"give these S2OError as a base (keeping their builtin base): {outside}"


def test_the_builtin_bases_are_kept_and_exit_codes_are_the_clis():
    from s2o_platform.bundle import BundleError
    from s2o_platform.demo import DemoError
    from s2o_platform.ray_cluster import RayStartError

    assert issubclass(BundleError, ValueError) and issubclass(RayStartError, RuntimeError)
    assert BundleError.exit_code == 2 and RayStartError.exit_code == 2 and DemoError.exit_code == 1


def test_a_missing_store_is_its_own_type(tmp_path):
    from s2o_platform.data.store import METADATA_FILE, StoreError, StoreMissingError, read_metadata

    with pytest.raises(StoreMissingError, match="no tile store"):
        read_metadata(str(tmp_path / "nothing"))
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="corrupt") as err:
        read_metadata(str(tmp_path))
    assert not isinstance(err.value, StoreMissingError)


def assert_one_line_error(args: list[str], code: int, *words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # mapped, not an uncaught error
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output, result.output
    for word in words:
        assert word in result.stderr, result.stderr


def test_the_cli_maps_a_missing_bundle_to_exit_2(tmp_path):
    from s2o_platform.data.normalization import SarNormalization
    from s2o_platform.data.store import StoreMetadata, write_metadata

    store = tmp_path / "store"  # metadata only: the bundle is refused before any tile is read or Ray starts
    write_metadata(
        str(store), StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    )
    missing = tmp_path / "no-bundle"
    assert_one_line_error(
        ["eval", "--data", str(store), "--model", f"s={missing}", "--out", str(tmp_path / "report")],
        2,
        str(missing),
        "is missing",
    )
    assert not (tmp_path / "report").exists()


def test_the_cli_maps_a_missing_store_to_exit_2(tmp_path):
    assert_one_line_error(
        ["data", "info", str(tmp_path / "nothing")], 2, "no tile store", str(tmp_path / "nothing")
    )


def test_the_cli_keeps_an_errors_own_exit_code(tmp_path):
    assert_one_line_error(
        ["demo", "--preset", "huge", "--out", str(tmp_path / "demo")], 1, "unknown preset 'huge'"
    )
    assert not (tmp_path / "demo").exists()
