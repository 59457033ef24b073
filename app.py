"""The Gradio comparison app: variants side by side in chat form, with the harness's results.

Not built yet: it will read what the harness and training runs write, and hold no model logic.
"""

import sys

if __name__ == "__main__":
    print("app.py: the comparison app is not available in this version yet.", file=sys.stderr)
    sys.exit(2)
