"""Reference tests: diffusers' own LEDITS++ pipeline on tiny random models (see NOTES.md).

This folder is put on ``sys.path`` so tests import ``diffusers_capture`` directly; from elsewhere
use ``from tests.reference.diffusers_capture import ...`` (repo root on the path).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))
