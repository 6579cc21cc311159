import sys

from ducc.cli import main

sys.exit(main())
