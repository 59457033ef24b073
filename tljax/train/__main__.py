"""`python -m tljax.train`: the training command. The engine is not part of this release yet."""

import sys

if __name__ == "__main__":
    print("tljax.train: the training engine is not available in this version yet.\n"
          "What works today: `python -m tljax.zoo list | fetch NAME`, and loading, running, generating with\n"
          "and saving models in Python (see README.md).", file=sys.stderr)
    sys.exit(2)
