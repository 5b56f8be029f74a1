import sys

from dnsserver.cli import main

sys.exit(main())
