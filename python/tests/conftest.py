import pathlib
import sys

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parent
GOLDEN = REPO / "proto" / "tests" / "data"

# The plugin is tested from the source tree, not from an installed copy.
sys.path.insert(0, str(PYTHON_DIR))
