"""``python -m lib.data prepare [names]``: see ``lib.data.core.main``."""
import sys

from lib.data.core import main

sys.exit(main())
