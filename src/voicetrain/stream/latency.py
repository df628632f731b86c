"""The latency arithmetic of a live stream, as pure functions of sample counts.

A stream reads `block` new samples at a time. The step that converts them needs `lookahead`
samples after the output it makes (the model's own reach to the right plus the analysis
window's half, `analysis_delay`), and the SOLA joiner holds back `crossfade` samples (to fade
into the next block) and searches `search` samples either side for the best join. An input
sample that arrives first in a block is therefore played

    block + lookahead + analysis_delay + crossfade + search

samples later: the algorithmic latency. The device adds its own (PortAudio reports it), and the
compute time of a step must stay under one block or the output underruns.

Every count is in samples at the model's rate. Blocks are whole hops, since the model computes
whole frames, and so is a lookahead given on the command line; the lookahead a step needs may be
any number of samples (the incremental svc step's is its synthesis filter's half length).
"""

from __future__ import annotations

from dataclasses import dataclass


class StreamSettingError(ValueError):
    """A setting the stream cannot honour; the message names the flag, the value and the fix."""


@dataclass(frozen=True)
class StreamTiming:
    """Sample counts at `sample_rate` that fix when each output sample can be made."""

    sample_rate: int
    hop_length: int
    block: int  # new input samples per step, a whole number of hops
    lookahead: int  # samples after the output the model needs (its receptive field and synthesis)
    analysis_delay: int  # half the widest analysis window: samples after a frame's centre that it reads
    crossfade: int  # samples SOLA fades across at each join
    search: int  # samples SOLA may shift a join by, either way

    @property
    def output_samples(self) -> int:
        """Samples a step makes: the block, the crossfade into the next one and the search either side."""
        return self.block + self.crossfade + 2 * self.search

    @property
    def latency(self) -> int:
        """The algorithmic latency in samples (see the module's docstring)."""
        return self.block + self.lookahead + self.analysis_delay + self.crossfade + self.search

    def milliseconds(self, samples: int) -> float:
        return 1000.0 * samples / self.sample_rate

    def describe(self) -> str:
        """One line: the total and each part, in ms."""
        parts = {"block": self.block, "lookahead": self.lookahead, "analysis window": self.analysis_delay,
                 "crossfade": self.crossfade, "SOLA search": self.search}
        listed = " + ".join(f"{name} {self.milliseconds(value):.1f}" for name, value in parts.items())
        return f"algorithmic latency {self.milliseconds(self.latency):.1f} ms = {listed} ms"


def samples_of(milliseconds: float, sample_rate: int) -> int:
    return round(milliseconds * sample_rate / 1000.0)


def whole_hops(samples: int, hop_length: int) -> int:
    """`samples` rounded up to a whole number of hops."""
    return -(-samples // hop_length) * hop_length


def stream_timing(sample_rate: int, hop_length: int, block_ms: float, lookahead_ms: float | None,
                  crossfade_ms: float, search_ms: float, needed_lookahead: int, analysis_delay: int) -> StreamTiming:
    """The timing of a stream asked for in milliseconds, checked against what the model needs:
    a block of at least one hop (rounded up to whole hops), a lookahead of at least
    `needed_lookahead` samples (None: exactly that), a crossfade no longer than the block.
    Raises StreamSettingError naming the flag, the value and the fix."""
    hop_ms = 1000.0 * hop_length / sample_rate
    block = samples_of(block_ms, sample_rate)
    if block < hop_length:
        raise StreamSettingError(f"--block-ms {block_ms:g} is shorter than one hop of the model ({hop_length} samples "
                                 f"= {hop_ms:g} ms at {sample_rate} Hz); give --block-ms {hop_ms:g} or more")
    block = whole_hops(block, hop_length)
    needed_ms = 1000.0 * needed_lookahead / sample_rate
    if lookahead_ms is None:
        lookahead = needed_lookahead
    else:
        lookahead = whole_hops(samples_of(lookahead_ms, sample_rate), hop_length)
        if lookahead < needed_lookahead:
            raise StreamSettingError(
                f"--lookahead-ms {lookahead_ms:g}: this model cannot honour it, its layers reach {needed_ms:g} ms "
                f"past the samples they make; give --lookahead-ms {needed_ms:g} or more (or leave it out), or train "
                "with the recipe's causal setting (task.causal=true) for a shorter one")
    crossfade = samples_of(crossfade_ms, sample_rate)
    search = samples_of(search_ms, sample_rate)
    if crossfade < 0 or search < 0:
        raise StreamSettingError(f"--crossfade-ms {crossfade_ms:g} and --search-ms {search_ms:g} must be >= 0")
    if crossfade > block:
        raise StreamSettingError(f"--crossfade-ms {crossfade_ms:g} is longer than the block "
                                 f"({1000.0 * block / sample_rate:g} ms); give at most that, or a longer --block-ms")
    return StreamTiming(sample_rate, hop_length, block, lookahead, analysis_delay, crossfade, search)
