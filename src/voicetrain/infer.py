"""`python -m voicetrain.infer EXPORT_DIR ...`: kept at this name for users; the command lives in
`voicetrain.export.infer`."""

import sys

from voicetrain.export.infer import main

if __name__ == "__main__":
    sys.exit(main())
