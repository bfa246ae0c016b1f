"""Join a chat broker. See README.md, or: python client.py --help"""

import sys

from chat.cli import client_main

if __name__ == "__main__":
    sys.exit(client_main())
