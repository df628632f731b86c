"""`python -m voicetrain.evaluate`: see `voicetrain.evaluate.command`."""

import sys

from voicetrain.evaluate.command import main

if __name__ == "__main__":
    sys.exit(main())
