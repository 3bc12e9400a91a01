"""The optional compiled core of the ledger (``paykeep/ledger/_fastpath.c``).

Everything else about the package is in ``pyproject.toml``. The extension is optional: where
no C compiler, Python headers or OpenSSL headers exist, the build warns and the install goes
on without it, and the ledger runs its pure-Python engine (``paykeep.ledger.fastpath``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "paykeep.ledger._fastpath",
            sources=["paykeep/ledger/_fastpath.c"],
            libraries=["crypto"],
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
