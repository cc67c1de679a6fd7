"""s2o-platform: SAR-to-optical translation on Ray."""

__version__ = "0.1.0"

__all__ = ["S2OPipeline", "S2OPipelineOutput", "__version__"]

#: The Python API (s2o_platform/pipeline.py), imported on first use: `import s2o_platform` stays light.
_LAZY = {"S2OPipeline": "s2o_platform.pipeline", "S2OPipelineOutput": "s2o_platform.pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 's2o_platform' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
