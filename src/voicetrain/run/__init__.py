"""One launch: the training loop, optimizers, progress and TensorBoard, signals, sweeps, the
end-of-run summary, and the re-export command that joins a checkpoint to the exporter."""
