"""Run at start-up by the `python -m tljax...` processes the tests launch (`conftest.cli_env` puts this folder
on PYTHONPATH): torch is made unimportable, as in an install without the test extra, where it is not present.
With it present, transformers imports it into every process (about 1.5 s each) though tljax never uses it."""

import sys

sys.modules["torch"] = None  # `import torch` raises ImportError; importlib.util.find_spec("torch") is None
