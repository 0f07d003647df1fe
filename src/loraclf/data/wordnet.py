"""WordNet and the English stopwords, offline, for augmentation's synonyms (data/augment.py).

WordNet is read with nltk's WordNet reader from, in order:
  1. the folder named by LORACLF_WORDNET_DIR, when set (and then nothing else);
  2. nltk's own data (`python -m nltk.downloader wordnet`);
  3. the system WordNet 3.0 (`apt-get install wordnet-base`, in /usr/share/wordnet).
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path

from ..base.errors import LoraclfError

WORDNET_ENV = "LORACLF_WORDNET_DIR"
SYSTEM_WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict")
INSTALL_HINT = "install it with `python -m nltk.downloader wordnet` or `apt-get install wordnet-base`"

# nltk's English stopword list (the 2023 version, a superset of the older one). It is always used, with nltk's own
# list added when that corpus is installed, so that augmented texts do not depend on which nltk data is present.
STOPWORDS_EN = frozenset("""
a about above after again against ain all am an and any are aren aren't as at be because been before being below
between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down during each
few for from further had hadn hadn't has hasn hasn't have haven haven't having he he'd he'll he's her here hers
herself him himself his how i i'd i'll i'm i've if in into is isn isn't it it'd it'll it's its itself just ll m
ma me mightn mightn't more most mustn mustn't my myself needn needn't no nor not now o of off on once only or other
our ours ourselves out over own re s same shan shan't she she'd she'll she's should should've shouldn shouldn't so
some such t than that that'll the their theirs them themselves then there these they they'd they'll they're
they've this those through to too under until up ve very was wasn wasn't we we'd we'll we're we've were weren
weren't what when where which while who whom why will with won won't wouldn wouldn't y you you'd you'll you're
you've your yours yourself yourselves
""".split())

# The 45 lexicographer files of WordNet 3.0, from lexnames(5WN). Debian's wordnet-base ships no `lexnames` file,
# and nltk's reader needs one; the numbers are fixed by the WordNet database format.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES_TEXT = "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))

_POS = ("noun", "verb", "adj", "adv")
_WORDNET_FILES = tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in _POS) + tuple(f"{pos}.exc" for pos in _POS)


def get_wordnet():
    """The cached nltk WordNet reader; raises LoraclfError saying how to install WordNet when none is found."""
    kind, location = _find_wordnet()
    return _load_wordnet(kind, location)


def _find_wordnet() -> tuple[str, str]:
    forced = os.environ.get(WORDNET_ENV)
    if forced:
        folder = Path(forced).expanduser()
        missing = [f for f in _WORDNET_FILES if not (folder / f).is_file()]
        if missing:
            raise LoraclfError(
                f"no WordNet in {WORDNET_ENV}={forced} (missing {', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): point it at a WordNet dict folder, or unset it and "
                f"{INSTALL_HINT}"
            )
        return "dir", str(folder.resolve())
    try:
        import nltk.data
    except ImportError:
        raise LoraclfError("augmentation needs nltk: pip install 'loraclf[augment]'") from None
    try:
        return "nltk", str(nltk.data.find("corpora/wordnet"))  # the location keys the cache
    except LookupError:
        pass
    for folder in SYSTEM_WORDNET_DIRS:
        if all(os.path.isfile(os.path.join(folder, f)) for f in _WORDNET_FILES):
            return "dir", str(Path(folder).resolve())
    raise LoraclfError(f"WordNet is not installed (augmentation needs it): {INSTALL_HINT}")


@functools.lru_cache(maxsize=None)
def _load_wordnet(kind: str, location: str):
    import nltk.data

    if kind == "nltk":
        return _reader_class()(nltk.data.find("corpora/wordnet"), builtin_lexnames=False)
    # nltk >= 3.9.3 opens corpus files only under a root on nltk.data.path, and refuses symlinks and hard links,
    # so a folder outside nltk's data is registered there and read in place.
    if location not in nltk.data.path:
        nltk.data.path.append(location)
    return _reader_class()(location, builtin_lexnames=not os.path.isfile(os.path.join(location, "lexnames")))


@functools.lru_cache(maxsize=1)
def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30Reader(WordNetCorpusReader):
        """nltk's reader, with the standard `lexnames` supplied when the folder lacks it."""

        def __init__(self, root, builtin_lexnames: bool):
            self._builtin_lexnames = builtin_lexnames  # read by open() during the parent's __init__
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The multilingual functions")  # no OMW: English only
                super().__init__(root, None)

        def open(self, file):
            if file == "lexnames" and self._builtin_lexnames:
                return io.StringIO(LEXNAMES_TEXT)
            return super().open(file)

        def map_wn(self, version="wordnet"):
            # nltk maps other WordNet versions onto 3.0 through nltk's `wordnet` package, which may be absent.
            # WordNet 3.0 maps onto itself, so no mapping is needed.
            if self.get_version() == "3.0":
                return None
            return super().map_wn(version)

    return WordNet30Reader


@functools.lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """STOPWORDS_EN, plus nltk's English list when its stopwords corpus is installed."""
    words = set(STOPWORDS_EN)
    try:
        from nltk.corpus import stopwords as nltk_stopwords

        words.update(w.lower() for w in nltk_stopwords.words("english"))
    except (ImportError, LookupError, OSError):
        pass
    return frozenset(words)
