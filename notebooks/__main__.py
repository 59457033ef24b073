import sys

from notebooks.run import main

sys.exit(main())
