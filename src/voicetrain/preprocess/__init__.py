"""Raw recordings in, a training-ready corpus out: `python -m voicetrain.preprocess`.

Resample, cut long recordings at their silences, trim, normalise loudness under a peak ceiling,
leave out (and list) clips that are too short, clipped or silent, spell out the numbers of
transcripts, and write a corpus that `python -m voicetrain data=speakers` (or `data=ljspeech`)
reads as it is, with a report. One module per concern: settings, sources (the input), slicer,
levels, transcripts, layout (the output), journal (what is done), recording (one recording, in a
worker), pipeline (one launch), report, command (the Hydra entry). Nothing imports this package.
"""
