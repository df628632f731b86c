"""`python -m voicetrain.evaluate EXPORT [EXPORT ...]`: the field's evaluation table, offline.

One module per concern:
- `plan`: what is scored (pure): the held-out items of each task (VC/SVC pairs, TTS sentences, vocoder
  recordings), a spread subset of them, the rows (ground truth, each export, the task's baseline, vocoders).
- `systems`: how a row turns an item into a wave: the recordings, the export through its task's `infer` (the
  code `python -m voicetrain.infer` runs), Griffin-Lim, the unconverted source.
- `scoring`: the columns of each task and how one wave is scored against its references.
- `report`: the table (markdown with arrows), report.json, the per-utterance CSV and the figure.
- `command`: the command line: data overrides, the output folder it owns, the progress bar.
"""
