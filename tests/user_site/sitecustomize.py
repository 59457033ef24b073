"""Run at start-up by the `python -m tljax...` processes the tests launch (`conftest.cli_env` puts this folder
on PYTHONPATH): torch is made unimportable, as in an install without the test extra, where it is not present.
With it present, transformers imports it into every process (about 1.5 s each) though tljax never uses it.

Every finder is told that torch does not exist (`importlib.util.find_spec("torch")` is None, `import torch`
raises ModuleNotFoundError), as for a package that is not installed; a `None` in `sys.modules` would say so too, but
libraries that look torch up in `sys.modules` (scipy's array-API helpers) then fail on the `None`."""

import sys


class _WithoutTorch:
    """A meta-path finder that finds everything its `finder` finds but torch."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, attribute)


sys.meta_path[:] = [_WithoutTorch(finder) if hasattr(finder, "find_spec") else finder for finder in sys.meta_path]
