import sys

from ddim.commands import main

sys.exit(main())
