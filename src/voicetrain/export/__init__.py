"""The inference export: writer and verification (`writer`), ONNX (`onnx`), and `infer`, which
serves requests from an export folder alone. `python -m voicetrain.export RUN_DIR` re-exports a
run's checkpoint (see `voicetrain.run.reexport`)."""
