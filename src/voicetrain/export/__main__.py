"""`python -m voicetrain.export RUN_DIR`: an entry point; the command (which joins a checkpoint to the
exporter, so it lives above both) is `voicetrain.run.reexport`."""

import sys

from voicetrain.run.reexport import main

sys.exit(main())
