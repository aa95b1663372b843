"""ssmgen: codegen and autotuning for Mamba's selective scan.

The layout keeps backends/, templates/ and autotune_cache/ at the top level of the repository;
they install as the subpackages ssmgen.backends, ssmgen.templates and ssmgen.autotune_cache, so
an installed (non-editable) ssmgen finds its templates from any working directory.
"""
from setuptools import setup

setup(
    name="ssmgen",
    version="0.1.0",
    description="Compiler-style codegen and autotuning for the selective scan of Mamba SSMs",
    python_requires=">=3.10",
    packages=["ssmgen", "ssmgen.backends", "ssmgen.templates", "ssmgen.autotune_cache"],
    package_dir={
        "ssmgen": "ssmgen",
        "ssmgen.backends": "backends",
        "ssmgen.templates": "templates",
        "ssmgen.autotune_cache": "autotune_cache",
    },
    package_data={
        "ssmgen": ["suite.json"],
        "ssmgen.backends": ["*.cpp"],
        "ssmgen.templates": ["triton/*.jinja", "triton/*.json", "cuda/*.jinja", "cuda/*.json"],
        "ssmgen.autotune_cache": ["*.json"],
    },
    include_package_data=True,
    install_requires=["torch", "triton", "jinja2"],
    extras_require={"test": ["pytest", "hypothesis", "numpy"], "cuda": ["cupy-cuda13x", "ninja"]},
    entry_points={"console_scripts": ["ssmgen=ssmgen.cli:main"]},
)
