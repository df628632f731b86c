"""voicetrain's benchmarks, one module per area, run by scripts/bench.py (`make bench`).

    common      composing the recipe, timing launches, medians and spreads, process memory
    corpora     the bundled corpus copied to N utterances (hard links), built once per bench run
    training    loop_overhead, export_size, tts_mcd
    checkpoints checkpoint_stall, scratch_bytes, resume_latency
    features    feature_memory, warm_start, cold_extraction (issue 13)
    memory_driver  the training process feature_memory measures (run as a subprocess)
    stream      stream: latency and compute per block of python -m voicetrain.stream (issue 22)

Every benchmark is `def name(options: argparse.Namespace) -> None` and prints its ratio lines.
"""
