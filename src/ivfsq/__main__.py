import sys

from ivfsq.cli import main

sys.exit(main())
