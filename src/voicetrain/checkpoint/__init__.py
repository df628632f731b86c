"""A run's checkpoints: the store (layout and commit protocol), asynchronous snapshots, retention
(pure), resume (pure plan and the loader with fallback), RAM-disk scratch and fine-tune loading."""
