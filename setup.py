"""The compiled header walk (imgcurate/io/_tarwalk.c); everything else is in setup.cfg.

The extension is optional: where it cannot be built (no C compiler), imgcurate installs without
it and reads tars with the same checks in Python and numpy, slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("imgcurate.io._tarwalk", ["imgcurate/io/_tarwalk.c"], optional=True)])
