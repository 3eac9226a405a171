"""Public names stay the functions and classes they document, whatever was imported before.

A package's submodule becomes an attribute of the package when it is imported, so a verb whose
module had the verb's own name (``dataframe/dedup.py`` defining ``dedup``) turned into that module
once anything imported it first. Run in a fresh interpreter so the order of imports is ours.
"""

import subprocess
import sys
import textwrap


def test_every_public_name_is_what_it_says_after_every_module_is_imported():
    script = textwrap.dedent("""
        import importlib, inspect, pkgutil
        import imgcurate, imgcurate.dataframe
        for info in pkgutil.walk_packages(imgcurate.__path__, "imgcurate."):
            if not info.name.endswith("__main__"):  # running it would start the command line
                importlib.import_module(info.name)
        bad = []
        for package in (imgcurate, imgcurate.dataframe):
            for name in package.__all__:
                value = getattr(package, name)
                if name != "__version__" and (inspect.ismodule(value) or not callable(value)):
                    bad.append(f"{package.__name__}.{name} is {value!r}")
        print("\\n".join(bad))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
