"""Codecs: how a vector is stored in a list row, and their registry.

A registry entry (:class:`CodecKind`) is everything the rest of the library
asks about a kind of code: how many bytes a row takes for a dimension, the
range statistic it trains with by default, how to train a codec on sample
values, and how to rebuild (and check) one from its file sections. The
trained codec (a value, e.g. :class:`~ivfsq.codecs.scalar.ScalarQuantizer`)
encodes and decodes rows, computes the per-query tables the scan needs,
names its file sections, declares what a valid stored state is and says why
another codec's rows cannot be mixed with its own (merge, shards).

Adding a codec is its entry here, its codec class, its kernels and its
tests (the conformance tests run over every entry); the documentation page
"Adding a codec" lists the files.

>>> from ivfsq import codecs
>>> codecs.NAMES
('sq8', 'sq4', 'sq8_uniform', 'sq4_uniform')
>>> codecs.get("sq4").code_size(dim=9)
5
"""

from dataclasses import dataclass

from ivfsq.codecs.scalar import DEFAULT_RANGE_QUANTILE, RANGE_STATS, ScalarQuantizer

__all__ = ["CodecKind", "CODECS", "NAMES", "RANGE_STATS", "get"]


@dataclass(frozen=True)
class CodecKind:
    """One kind of code.

    Attributes
    ----------
    name : str
        The public name (``IndexParams(quantizer=...)``).
    codec : type
        The class of its trained codecs (``train``, ``from_arrays``,
        ``SECTIONS``, ``code_size_of``).
    bits : int
        Bits per dimension: the code layout the kernels read.
    uniform : bool
        One range for every dimension instead of one per dimension.
    default_range_stat : str
        The range statistic of ``range_stat=None`` (the one that gave the best
        recall; the benchmark pages have the runs).
    """

    name: str
    codec: type
    bits: int
    uniform: bool
    default_range_stat: str

    def code_size(self, dim):
        """Bytes of one code row for ``dim`` dimensions."""
        return self.codec.code_size_of(self.bits, dim)

    @property
    def sections(self):
        """Names of the file sections a trained codec of this kind stores."""
        return self.codec.SECTIONS

    def train(self, values, range_stat=None, range_quantile=DEFAULT_RANGE_QUANTILE):
        """A codec trained on ``values`` (float32, (n, dim))."""
        return self.codec.train(self, values, range_stat or self.default_range_stat,
                                range_quantile)

    def from_arrays(self, arrays, dim=None):
        """The codec stored in ``arrays`` (its sections), checked: ValueError
        naming what is wrong."""
        return self.codec.from_arrays(self, arrays, dim)


CODECS = {
    kind.name: kind
    for kind in (
        CodecKind("sq8", ScalarQuantizer, 8, False, "mse"),
        CodecKind("sq4", ScalarQuantizer, 4, False, "quantile"),
        CodecKind("sq8_uniform", ScalarQuantizer, 8, True, "minmax"),
        CodecKind("sq4_uniform", ScalarQuantizer, 4, True, "quantile"),
    )
}
NAMES = tuple(CODECS)


def get(name):
    """The registry entry of codec ``name`` (a CodecKind passes through);
    ValueError naming the choices."""
    if isinstance(name, CodecKind):
        return name
    kind = CODECS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"quantizer must be one of {list(NAMES)}, got {name!r}")
    return kind
