"""A tiny sentence grammar: short, lower-case, punctuation-free English transcripts.

The vocabulary is deliberately small (323 words) so that a tiny audio LLM trained on CPU can
learn to transcribe it, while the templates give enough variety that memorising whole
sentences is not an option.
"""

from __future__ import annotations

import random

DETERMINERS = ["the", "a", "this", "that", "my", "your", "our", "every"]
ADJECTIVES = [
    "big", "small", "old", "new", "happy", "sad", "quick", "slow", "loud", "quiet",
    "warm", "cold", "soft", "hard", "tall", "short", "bright", "dark", "clean", "tiny",
    "heavy", "light", "young", "funny", "lazy", "busy", "brave", "calm", "strange", "gentle",
]
COLOURS = [
    "red", "blue", "green", "yellow", "black", "white", "brown", "orange", "purple",
    "pink", "grey", "golden",
]
# (singular, plural)
NOUNS = [
    ("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"), ("fish", "fish"),
    ("car", "cars"), ("boat", "boats"), ("train", "trains"), ("house", "houses"),
    ("tree", "trees"), ("flower", "flowers"), ("apple", "apples"), ("table", "tables"),
    ("chair", "chairs"), ("door", "doors"), ("window", "windows"), ("book", "books"),
    ("letter", "letters"), ("box", "boxes"), ("ball", "balls"), ("cup", "cups"),
    ("hat", "hats"), ("shoe", "shoes"), ("coat", "coats"), ("lamp", "lamps"),
    ("key", "keys"), ("phone", "phones"), ("clock", "clocks"), ("river", "rivers"),
    ("road", "roads"), ("garden", "gardens"), ("bridge", "bridges"), ("city", "cities"),
    ("farmer", "farmers"), ("teacher", "teachers"), ("doctor", "doctors"),
    ("child", "children"), ("baby", "babies"), ("friend", "friends"), ("king", "kings"),
    ("queen", "queens"), ("robot", "robots"), ("cake", "cakes"), ("bottle", "bottles"),
    ("stone", "stones"), ("cloud", "clouds"), ("star", "stars"), ("song", "songs"),
    ("paper", "papers"), ("ship", "ships"),
]
# (base, third person singular, past)
VERBS = [
    ("see", "sees", "saw"), ("find", "finds", "found"), ("take", "takes", "took"),
    ("bring", "brings", "brought"), ("carry", "carries", "carried"), ("push", "pushes", "pushed"),
    ("pull", "pulls", "pulled"), ("open", "opens", "opened"), ("close", "closes", "closed"),
    ("paint", "paints", "painted"), ("clean", "cleans", "cleaned"), ("move", "moves", "moved"),
    ("hold", "holds", "held"), ("drop", "drops", "dropped"), ("want", "wants", "wanted"),
    ("like", "likes", "liked"), ("watch", "watches", "watched"), ("follow", "follows", "followed"),
    ("sell", "sells", "sold"), ("buy", "buys", "bought"), ("build", "builds", "built"),
    ("draw", "draws", "drew"), ("throw", "throws", "threw"), ("catch", "catches", "caught"),
    ("read", "reads", "read"), ("keep", "keeps", "kept"), ("hide", "hides", "hid"),
    ("wash", "washes", "washed"),
]
# intransitive (base, third person singular, past)
INTRANSITIVE = [
    ("run", "runs", "ran"), ("sleep", "sleeps", "slept"), ("sing", "sings", "sang"),
    ("jump", "jumps", "jumped"), ("wait", "waits", "waited"), ("swim", "swims", "swam"),
    ("dance", "dances", "danced"), ("fall", "falls", "fell"), ("smile", "smiles", "smiled"),
    ("walk", "walks", "walked"), ("rest", "rests", "rested"), ("shine", "shines", "shone"),
]
ADVERBS = [
    "quickly", "slowly", "quietly", "loudly", "today", "again", "outside", "inside",
    "early", "late", "together", "alone", "happily", "carefully",
]
PREPOSITIONS = ["on", "under", "near", "behind", "beside", "inside", "above", "below"]
NUMBERS = [
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "fifteen", "twenty", "thirty", "forty", "fifty",
]
NAMES = [
    "anna", "peter", "maria", "john", "lucy", "tom", "emma", "david", "sarah", "paul",
    "kate", "james", "linda", "mark", "alice", "simon",
]


def _np(rng: random.Random, plural: bool = False) -> list[str]:
    """Noun phrase: determiner/number, optional adjective and/or colour, noun."""
    sing, plur = rng.choice(NOUNS)
    words: list[str] = []
    if plural:
        words.append(rng.choice(NUMBERS))
    else:
        words.append(rng.choice(DETERMINERS))
    r = rng.random()
    if r < 0.3:
        words.append(rng.choice(ADJECTIVES))
    elif r < 0.55:
        words.append(rng.choice(COLOURS))
    elif r < 0.7:
        words += [rng.choice(ADJECTIVES), rng.choice(COLOURS)]
    words.append(plur if plural else sing)
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "the"  # avoid "a apple" without needing "an" in the vocabulary
    return words


def _subject(rng: random.Random) -> tuple[list[str], bool]:
    """Subject phrase and whether it is plural."""
    r = rng.random()
    if r < 0.25:
        return [rng.choice(NAMES)], False
    if r < 0.45:
        return _np(rng, plural=True), True
    return _np(rng), False


def _clause(rng: random.Random) -> list[str]:
    subj, plural = _subject(rng)
    t = rng.randrange(5)
    if t == 0:  # transitive, past
        return subj + [rng.choice(VERBS)[2]] + _np(rng, plural=rng.random() < 0.3)
    if t == 1:  # transitive, present
        v = rng.choice(VERBS)
        return subj + [v[0] if plural else v[1]] + _np(rng, plural=rng.random() < 0.3)
    if t == 2:  # intransitive + adverb
        v = rng.choice(INTRANSITIVE)
        return subj + [rng.choice((v[2], v[0] if plural else v[1])), rng.choice(ADVERBS)]
    if t == 3:  # location
        return subj + ["are" if plural else "is", rng.choice(PREPOSITIONS)] + _np(rng)
    # imperative
    return ["please", rng.choice(VERBS)[0]] + _np(rng, plural=rng.random() < 0.3)


def sentence(rng: random.Random, min_words: int = 3, max_words: int = 8) -> str:
    """Sample a sentence whose word count lies in [min_words, max_words] (rejection sampling)."""
    for _ in range(1000):
        words = _clause(rng)
        if min_words <= len(words) <= max_words:
            return " ".join(words)
    raise RuntimeError(f"grammar cannot produce {min_words}-{max_words} words")


def vocabulary() -> set[str]:
    """All words the grammar can emit (used in tests and reported in the summary)."""
    vocab = set(DETERMINERS + ADJECTIVES + COLOURS + ADVERBS + PREPOSITIONS + NUMBERS + NAMES)
    vocab |= {w for pair in NOUNS for w in pair}
    vocab |= {w for trip in VERBS + INTRANSITIVE for w in trip}
    vocab |= {"please", "is", "are"}
    return vocab
