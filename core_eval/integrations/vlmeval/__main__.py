"""``python -m core_eval.integrations.vlmeval`` = ``core-vlmeval``."""

import sys

from core_eval.integrations.vlmeval import main

sys.exit(main())
