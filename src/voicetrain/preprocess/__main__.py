"""`python -m voicetrain.preprocess`: see voicetrain.preprocess.command."""

from voicetrain.preprocess.command import main

main()
