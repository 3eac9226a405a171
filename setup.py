"""The reader's compiled loops (imgcurate/io/_fastio.c); everything else is in setup.cfg.

The extension is optional: where it cannot be built (no C compiler), imgcurate installs without
it and reads tars with the same checks and results in Python and numpy, slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("imgcurate.io._fastio", ["imgcurate/io/_fastio.c"], optional=True)])
