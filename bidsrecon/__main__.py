import sys

from bidsrecon.cli import main

sys.exit(main())
