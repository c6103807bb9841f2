import sys

from vadr1_lib.cli import main

sys.exit(main())
