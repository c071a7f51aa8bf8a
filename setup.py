"""Build the native access-log scanner; everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and
import parses with the (slower) pure Arrow reference path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "loglambda.core.parsers._accessscan",
            sources=["loglambda/core/parsers/_accessscan.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
