"""`python -m voicetrain`: see voicetrain.cli."""

from voicetrain.cli import main

main()
