"""Start the chat broker. See README.md, or: python broker.py --help"""

import sys

from chat.cli import broker_main

if __name__ == "__main__":
    sys.exit(broker_main())
