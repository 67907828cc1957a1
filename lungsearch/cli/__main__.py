import sys

from lungsearch.cli import main

sys.exit(main())
