import sys

from pyflm.cli import main

sys.exit(main())
