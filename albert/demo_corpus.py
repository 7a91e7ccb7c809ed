"""Built-in, offline, deterministic WikiText-style corpus for the demo.

A fresh user has no WikiText-103 download, so the demo pretrains on procedurally
generated encyclopedia articles instead. Articles about fictional towns, rivers,
ships, musicians and scientists are assembled from sentence templates. Facts are
drawn once per article and referred back to later ("the mill that X had built"),
and events run in chronological or downstream order with connectives such as
"after that" or "three years later". Sentence order therefore carries signal,
which is what ALBERT's sentence-order-prediction (SOP) objective needs.

The output mimics raw WikiText: ` = Title = ` and ` = = Section = = ` headings
between blank lines (a single space), paragraph lines with a leading and a
trailing space, punctuation split off by spaces, and `@-@`, `@,@`, `@.@` inside
words and numbers.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
Section = tuple[str, list[str]]  # (heading, sentences); list-like sections use one sentence per line
Article = tuple[str, list[Section]]  # (title, sections)

_ONSETS = ["al", "bar", "cor", "dun", "el", "fen", "gar", "hal", "is", "jor", "kel", "lin", "mar", "nor",
           "or", "pel", "quen", "ros", "sal", "tor", "ul", "val", "wen", "yar", "zel", "ash", "bran", "cal",
           "dra", "eth", "fal", "gor", "hest", "ir", "kar", "lom", "mor", "nes", "ost", "pra", "rhos", "sten",
           "thal", "ved", "wyn", "brod", "cen", "dav", "fir", "grel", "lud", "mel", "rav", "sev", "tam",
           "ab", "bel", "chir", "dor", "em", "fro", "hul", "jas", "kov", "lar", "mun", "pol", "sar", "tre"]
_MIDDLES = ["a", "e", "i", "o", "u", "an", "en", "in", "ar", "er", "or", "il", "el", "ad", "ow", "ith",
            "am", "ur", "is", "ol"]
_CODAS = ["mora", "den", "vin", "ric", "ka", "nes", "lo", "wen", "dor", "ta", "sen", "mir", "gan", "th",
          "var", "lis", "ton", "rek", "na", "ros", "bel", "dal", "im", "ov", "ett", "ane", "ard", "ell",
          "ava", "esk", "ion", "ul", "ay", "oth", "ira", "ek"]
_PLACE_SUFFIXES = ["ford", "by", "wick", "ton", "haven", "mouth", "dale", "stead", "bury", "holm", "field",
                   "gate", "moor", "bridge", "well", "combe", "thorpe", "ley", "minster", "port"]
_FIRST_NAMES = ["Anna", "Tomas", "Elise", "Marek", "Ingrid", "Pavel", "Clara", "Henrik", "Sofia", "Jonas",
                "Lena", "Viktor", "Maren", "Oskar", "Helena", "Arvid", "Petra", "Emil", "Greta", "Lukas",
                "Irene", "Casimir", "Nadia", "Bertil", "Rosa", "Anton", "Vera", "Felix", "Alma", "Konrad",
                "Dora", "Ivo", "Hedda", "Milan", "Selma", "Otto", "Lidia", "Rafael", "Ottilie", "Stefan"]
_FEMALE = {"Anna", "Elise", "Ingrid", "Clara", "Sofia", "Lena", "Maren", "Helena", "Petra", "Greta",
           "Irene", "Nadia", "Rosa", "Vera", "Alma", "Dora", "Hedda", "Selma", "Lidia", "Ottilie"}
_NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_DIRECTIONS = ["north", "south", "east", "west", "north-east", "north-west", "south-east", "south-west"]
_INDUSTRIES = ["textile", "brewing", "paper", "glass", "shipbuilding", "leather", "pottery", "timber",
               "salt", "wool", "copper", "clockmaking", "tobacco", "soap", "furniture", "rope"]
_EMPLOYERS = ["a hospital", "a logistics company", "a software firm", "the regional archive", "a dairy",
              "a bus manufacturer", "a printing works", "a chocolate factory", "the district council"]
_LANDMARKS = ["cathedral", "clock tower", "town hall", "stone bridge", "abbey", "castle", "covered market",
              "lighthouse", "opera house", "botanical garden", "observatory", "windmill"]
_OCCUPATIONS = ["painter", "poet", "composer", "engineer", "historian", "novelist", "botanist", "sculptor",
                "footballer", "actress", "architect", "photographer"]
_CARGOES = ["grain", "timber", "coal", "wine", "salt", "wool", "iron ore", "cheese", "bricks", "hay", "flax"]
_FISH = ["brown trout", "grayling", "barbel", "pike", "perch", "eel", "chub", "salmon", "bream", "roach"]
_BIRDS = ["kingfisher", "grey heron", "dipper", "sand martin", "white stork", "osprey", "moorhen"]
_TREES = ["alder", "willow", "oak", "ash", "beech", "birch", "poplar", "hornbeam"]
_MEANINGS = ["swift water", "white stream", "the winding one", "dark river", "bright water", "the border",
             "the grey one", "cold spring"]
_INSTRUMENTS = ["violin", "piano", "cello", "guitar", "clarinet", "accordion", "trumpet", "harp", "organ"]
_GENRES = ["folk", "jazz", "chamber pop", "blues", "art rock", "electronic", "baroque pop", "soul"]
_FIELDS = [("chemistry", "the crystal structure of salts"), ("botany", "the pollination of alpine flowers"),
           ("astronomy", "the orbits of comets"), ("geology", "the formation of limestone caves"),
           ("physics", "the conduction of heat in metals"), ("zoology", "the migration of eels"),
           ("mathematics", "the theory of prime numbers"), ("medicine", "the spread of fevers in ports")]
_SAIL_KINDS = ["sailing barque", "clipper", "schooner"]
_STEAM_KINDS = ["cargo steamer", "passenger liner", "paddle steamer", "icebreaker", "cable ship"]
_CLIMATES = ["mild and wet", "continental", "cool and windy", "warm and dry", "humid"]


class _Writer:
    """Random choices shared by all templates, drawn from one seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def distinct(self, options: Sequence[T], k: int) -> list[T]:
        return self.rng.sample(list(options), k)

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def word(self) -> str:
        middle = self.pick(_MIDDLES) if self.chance(0.5) else ""
        return (self.pick(_ONSETS) + middle + self.pick(_CODAS)).capitalize()

    def place(self) -> str:
        if self.chance(0.5):
            return self.word()
        return (self.pick(_ONSETS) + self.pick(_MIDDLES) + self.pick(_PLACE_SUFFIXES)).capitalize()

    def person(self) -> str:
        return f"{self.pick(_FIRST_NAMES)} {self.word()}"

    def number(self, low: int, high: int) -> str:
        return f"{self.rng.randint(low, high):,}"

    def count(self, low: int, high: int) -> str:
        return _NUMBER_WORDS[self.rng.randint(low, high)]


class _Timeline:
    """Advances a year and phrases each step, so events come out in chronological order."""

    def __init__(self, writer: _Writer, start_year: int) -> None:
        self.writer = writer
        self.year = start_year

    def _advance(self, low: int, high: int, not_before: int) -> int:
        gap = self.writer.rng.randint(low, high)
        target = max(self.year + gap, not_before + self.writer.rng.randint(0, 9))
        gap, self.year = target - self.year, target
        return gap

    def step(self, low: int, high: int, not_before: int = 0) -> str:
        """A sentence opening such as 'Three years later' that moves the clock forward."""
        gap = self._advance(low, high, not_before)
        if gap == 1:
            options = ["The following year", "A year later", f"In {self.year}"]
        elif gap <= 12:
            options = [f"In {self.year}", f"{_NUMBER_WORDS[gap].capitalize()} years later",
                       f"After that, in {self.year}", f"Later, in {self.year}"]
        else:
            options = [f"In {self.year}", f"Much later, in {self.year}", f"{gap} years later"]
        return self.writer.pick(options)

    def when(self, low: int, high: int) -> str:
        """Like `step`, phrased for the middle of a sentence."""
        gap = self._advance(low, high, 0)
        if gap == 1:
            return self.writer.pick(["the following year", f"in {self.year}"])
        count = _NUMBER_WORDS[gap] if gap <= 12 else str(gap)
        return self.writer.pick([f"in {self.year}", f"{count} years later"])


def _pronouns(first_name: str) -> tuple[str, str, str]:
    return ("she", "her", "her") if first_name in _FEMALE else ("he", "him", "his")


def _indefinite(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _plural(count: str, noun: str) -> str:
    return f"{count} {noun}" if count == "one" else f"{count} {noun}s"


def _town_history(w: _Writer, town: str, facts: dict[str, str]) -> list[str]:
    river, capital, rival, founder = facts["river"], facts["capital"], facts["rival"], facts["founder"]
    industry = facts["industry"]
    t = _Timeline(w, w.rng.randint(900, 1300))
    events = [
        f"The area around {town} was first settled in {t.year} by farmers who were drawn to the fertile "
        f"soil along the {river}.",
        f"{t.step(20, 80)}, {founder} built a water mill on the river, and a small village grew up around it.",
        w.pick([f"The village took its name from the mill that {founder} had built.",
                f"Local tradition holds that {founder} named the village after a ford across the {river}."]),
        f"{t.step(10, 60)}, the village received a market charter, which allowed it to hold a weekly market.",
        f"After that, traders from {rival} and {capital} came to the market to buy {industry} goods.",
    ]
    if w.chance(0.6):
        lord = w.person()
        events += [f"{t.step(10, 50)}, the town was besieged by the army of {lord} during a war over the "
                   f"river crossings.",
                   f"The siege lasted {_plural(w.count(2, 11), 'month')} and ended when {lord} ran out of supplies.",
                   "After the siege, the citizens built a wall around the market square."]
    if w.chance(0.5):
        events += [f"{t.step(10, 60)}, an outbreak of plague killed nearly a third of the inhabitants.",
                   "It took the town several decades to recover its former population."]
    events += [
        f"{t.step(15, 90)}, a great fire destroyed much of the old centre, including the mill of {founder}.",
        f"The town was rebuilt in stone over the following {w.count(3, 12)} years.",
    ]
    if w.chance(0.5):
        patron = w.person()
        events += [f"{t.step(10, 60)}, {patron} founded a grammar school in {town}.",
                   f"The school that {patron} had founded later grew into a teachers' college."]
    events += [
        f"{t.step(20, 80, not_before=1835)}, a railway line from {capital} reached {town}, and the population "
        f"grew quickly.",
        f"By {t.year + w.rng.randint(5, 20)}, more than {w.number(800, 9000)} people worked in the {industry} "
        f"factories.",
        f"Later, the decline of the {industry} industry led to high unemployment, and many families moved to "
        f"{capital}.",
        f"{t.step(10, 40, not_before=1960)}, the town council began to promote tourism, restoring the "
        f"{facts['landmark']} and the old market square.",
    ]
    return events


def _town_today(w: _Writer, town: str, facts: dict[str, str]) -> list[Section]:
    """Present-day sections; they refer back to the founder, industry and landmark of the history."""
    capital, rival, landmark, architect = facts["capital"], facts["rival"], facts["landmark"], w.person()
    employers = w.distinct(_EMPLOYERS, 2)
    economy = [
        f"Today the largest employers in {town} are {employers[0]} and {employers[1]}.",
        f"The {facts['industry']} industry, once the basis of the local economy, now employs fewer than "
        f"{w.number(50, 400)} people.",
        f"A farmers' market is still held every {w.pick(['Monday', 'Wednesday', 'Friday', 'Saturday'])} on "
        f"the square where the medieval market once stood.",
    ]
    transport = [
        f"{town} railway station lies on the line between {capital} and {rival}.",
        f"Trains to {capital} take about {w.rng.randint(15, 90)} minutes.",
        f"The main road to {rival} follows the old trade route along the {facts['river']}.",
    ]
    landmarks = [
        f"The most notable building in {town} is the {landmark}, designed by the architect {architect}.",
        f"{architect} was a native of {rival}, and the {landmark} was the first large commission of "
        f"{_pronouns(architect.split()[0])[2]} career.",
        f"Each {w.pick(['spring', 'summer', 'autumn', 'winter'])}, the town holds a festival in honour of "
        f"{facts['founder']}, the legendary founder of the settlement.",
    ]
    return [("Economy", economy), ("Transport", transport), ("Landmarks", landmarks)]


def _town_article(w: _Writer) -> Article:
    town = w.place()
    facts = {"river": w.word(), "capital": w.place(), "rival": w.place(), "founder": w.person(),
             "industry": w.pick(_INDUSTRIES), "landmark": w.pick(_LANDMARKS)}
    river = facts["river"]
    intro = [
        f"{town} is {_indefinite(w.pick(['small', 'market', 'historic', 'river', 'former mill']))} town in the "
        f"{w.word()} region of {w.word()}, on the {w.pick(['left', 'right'])} bank of the River {river}.",
        f"It lies {w.number(8, 90)} kilometres {w.pick(_DIRECTIONS)} of {facts['capital']}, the regional capital.",
        f"At the last census the town had a population of {w.number(2000, 60000)}.",
        f"{town} is best known for its {facts['landmark']} and for its {facts['industry']} industry.",
    ]
    geography = [
        f"{town} stands at an elevation of {w.number(20, 900)} metres above sea level.",
        f"The {river} divides the town into an older northern quarter and a newer southern quarter.",
        f"The two quarters are linked by {w.count(2, 6)} bridges, the oldest of which replaced the ford that "
        f"the first settlers used.",
        f"The climate is {w.pick(_CLIMATES)}, with an average {w.pick(_MONTHS)} temperature of "
        f"{w.rng.randint(-5, 25)}.{w.rng.randint(0, 9)} degrees.",
    ]
    people = [f"{w.person()} ( born {w.rng.randint(1850, 1995)} ), {w.pick(_OCCUPATIONS)}"
              for _ in range(w.rng.randint(2, 5))]
    return town, [("", intro), ("History", _town_history(w, town, facts)), ("Geography", geography),
                  *_town_today(w, town, facts), ("Notable people", people)]


def _river_course(w: _Writer, river: str, facts: dict) -> list[str]:
    towns, tributaries, trees = facts["towns"], facts["tributaries"], w.distinct(_TREES, 2)
    return [
        f"The {river} rises on the slopes of Mount {facts['mountain']} at an elevation of "
        f"{w.number(600, 2600)} metres.",
        f"From its source it flows {w.pick(_DIRECTIONS)} through the {w.word()} Forest, a dense woodland of "
        f"{trees[0]} and {trees[1]}.",
        f"It then passes {towns[0]}, where it is joined by its first major tributary, the {tributaries[0]}.",
        f"After leaving {towns[0]}, the river turns {w.pick(_DIRECTIONS)} and enters a narrow rocky valley.",
        f"In this valley the {tributaries[1]} joins from the {w.pick(['left', 'right'])}.",
        f"The valley widens again below {towns[1]}, and the river begins to meander across a broad plain.",
        f"Beyond {towns[2]} the {river} splits into several channels.",
        f"Finally, it empties into {facts['sea']} near the port of {towns[3]}.",
    ]


def _river_history(w: _Writer, river: str, facts: dict) -> list[str]:
    towns, cargo, engineer = facts["towns"], w.pick(_CARGOES), w.person()
    t = _Timeline(w, w.rng.randint(1300, 1700))
    events = [
        f"Boats carried {cargo} down the {river} from at least {t.year}.",
        f"The rapids below {towns[0]} were dangerous, and many boats were lost there.",
        f"{t.step(20, 90)}, the engineer {engineer} dug a canal to bypass the rapids.",
        f"After the canal of {engineer} opened, the trade in {cargo} at {towns[3]} doubled within a decade.",
    ]
    if w.chance(0.5):
        events += [f"{t.step(5, 30)}, a stone bridge was completed at {towns[1]}.",
                   f"Until then, travellers had crossed the {river} by ferry."]
    events += [
        f"{t.step(20, 80, not_before=1840)}, a railway was built along the valley, and river traffic declined.",
        f"{t.step(5, 40)}, a severe flood damaged {towns[1]} and washed away the old bridge.",
        f"After the flood, embankments were raised along the river between {towns[1]} and {towns[2]}.",
        f"{t.step(10, 40, not_before=1950)}, a hydroelectric dam was built above {towns[0]}.",
        f"The dam ended the floods, but it also stopped the {w.pick(_FISH)} from reaching their spawning "
        f"grounds upstream.",
    ]
    return events


def _river_article(w: _Writer) -> Article:
    river = w.word()
    facts = {"towns": [w.place() for _ in range(4)], "tributaries": [w.word(), w.word()],
             "mountain": w.word(), "sea": w.pick([f"the {w.word()} Sea", f"Lake {w.word()}",
                                                   f"the {w.word()} Gulf"])}
    towns, fish, birds = facts["towns"], w.distinct(_FISH, 3), w.distinct(_BIRDS, 2)
    intro = [
        f"The River {river} is a river in the {w.word()} region, {w.number(40, 700)} kilometres long.",
        f"It flows from Mount {facts['mountain']} to {facts['sea']}, passing the towns of {towns[0]}, "
        f"{towns[1]} and {towns[2]}.",
        f"Its drainage basin covers about {w.number(300, 40000)} square kilometres.",
    ]
    name = [f"The name {river} is thought to come from an old word meaning \"{w.pick(_MEANINGS)}\".",
            f"In older documents the river is also called the {w.word()}."]
    wildlife = [
        f"The {river} is home to {fish[0]}, {fish[1]} and {fish[2]}.",
        f"The reed beds near {towns[2]} attract the {birds[0]} and the {birds[1]}.",
        "Since the embankments were built, several nature reserves have been created on the old flood plain.",
    ]
    recreation = [
        f"A long-distance footpath follows the {river} from its source to {towns[3]}.",
        f"The path is {w.number(40, 700)} kilometres long, and most walkers take {w.count(4, 12)} days to "
        f"complete it.",
        f"Canoeing is popular on the quiet stretch between {towns[1]} and {towns[2]}.",
    ]
    return f"River {river}", [("", intro), ("Name", name), ("Course", _river_course(w, river, facts)),
                              ("History", _river_history(w, river, facts)), ("Wildlife", wildlife),
                              ("Recreation", recreation)]


def _ship_design(w: _Writer, name: str, kind: str) -> list[str]:
    if kind in _SAIL_KINDS:
        power = f"She carried {w.count(2, 4)} masts and a total sail area of {w.number(600, 3000)} square metres."
    else:
        engines = _plural(w.count(1, 4), "steam engine")
        power = f"She was powered by {engines}, which gave her a top speed of {w.rng.randint(9, 28)} knots."
    return [
        f"{name} was {w.number(40, 240)} metres long, with a beam of {w.rng.randint(8, 30)}.{w.rng.randint(0, 9)} "
        f"metres.",
        power,
        f"Her crew numbered {w.number(20, 600)} officers and men.",
        f"She had accommodation for {w.number(12, 900)} passengers and a hold for {w.pick(_CARGOES)}.",
    ]


def _ship_career(w: _Writer, name: str, t: _Timeline, facts: dict) -> list[str]:
    yard, captain, ports = facts["yard"], facts["captain"], facts["ports"]
    events = [
        f"{name} was ordered from a shipyard in {yard} in {t.year}.",
        f"{t.step(1, 2)}, her keel was laid down.",
        f"She was launched on {w.rng.randint(1, 28)} {w.pick(_MONTHS)} {t.year + 1}, and completed her trials "
        f"later that year.",
        f"{t.step(2, 3)}, under the command of captain {captain}, she made her first voyage from {yard} to "
        f"{ports[0]}.",
        f"After that, she sailed regularly between {ports[0]} and {ports[1]}, carrying {w.pick(_CARGOES)} and "
        f"passengers.",
        f"{t.step(3, 9)}, she ran aground in fog near {ports[2]}, but was refloated after "
        f"{_plural(w.count(2, 12), 'day')}.",
        f"The repairs took most of the following year, and {captain} retired soon afterwards.",
    ]
    if w.chance(0.5):
        events += [f"{t.step(1, 6)}, when war broke out, {name} was requisitioned as a "
                   f"{w.pick(['troop transport', 'hospital ship', 'supply ship'])}.",
                   f"During the war she carried soldiers between {ports[0]} and {w.place()}.",
                   "After the war ended, she was returned to her owners and refitted."]
    events += [
        f"{t.step(4, 15)}, {name} was sold to a new owner in {ports[1]}.",
        f"Her new owner renamed her {w.word()}, and she spent her later years on short coastal routes.",
    ]
    return events


def _ship_article(w: _Writer) -> Article:
    name, kind = w.word(), w.pick(_SAIL_KINDS + _STEAM_KINDS)
    facts = {"yard": w.place(), "captain": w.person(), "ports": [w.place() for _ in range(3)]}
    owner = w.pick([f"the {w.word()} Line", f"the merchant house of {w.word()}", f"the port of {w.place()}"])
    t = _Timeline(w, w.rng.randint(1830, 1950))
    ordered = t.year
    career = _ship_career(w, name, t, facts)
    fate = [
        f"{t.step(3, 12)}, the ship was laid up at {facts['ports'][1]}.",
        w.pick(["She was broken up for scrap the following year.",
                "She sank at her moorings during a storm, and her wreck still lies in the harbour.",
                f"She was towed to {facts['yard']}, the town where she had been built, and scrapped there."]),
        f"Her bell and figurehead are kept in the maritime museum at {facts['yard']}.",
    ]
    intro = [
        f"{name} was {_indefinite(kind)} built for {owner}.",
        f"She was in service for {t.year - ordered - 2} years and was one of the best known ships of her type.",
    ]
    return name, [("", intro), ("Design", _ship_design(w, name, kind)), ("Career", career), ("Fate", fate)]


def _musician_career(w: _Writer, surname: str, t: _Timeline, facts: dict) -> list[str]:
    she, her, band, album = facts["she"], facts["her"], facts["band"], facts["album"]
    second = w.word()
    events = [
        f"{t.step(2, 4)}, {surname} formed the band {band} with two friends from the conservatory.",
        f"The band first played in small clubs, and {surname} wrote most of its songs.",
        f"{t.step(1, 3)}, {band} released its debut album, {album}.",
        f"{album} was a surprise success, and the band toured for {_plural(w.count(2, 9), 'month')} to "
        f"promote it.",
    ]
    debut_year = t.year
    events.append(f"The second album, {second}, followed {t.when(1, 3)}, but sold fewer copies than {album}.")
    facts["albums"] = [(album, debut_year), (second, t.year)]
    events += [
        f"After the tour for {second}, tensions grew within the band, and {band} split up {t.when(1, 4)}.",
        f"{surname} then began a solo career, and {her} first solo album appeared {t.when(1, 3)}.",
    ]
    if w.chance(0.5):
        events += [f"{t.step(1, 5)}, the members of {band} reunited for a single concert in {facts['home']}.",
                   "A recording of the reunion concert was released the following year."]
    events.append(f"Later, {she} returned to {facts['home']} and opened a music school there.")
    return events


def _musician_article(w: _Writer) -> Article:
    first = w.pick(_FIRST_NAMES)
    name, home = f"{first} {w.word()}", w.place()
    she, him, her = _pronouns(first)
    surname, mentor, partner = name.split()[1], w.person(), w.person()
    genre, other_genre = w.distinct(_GENRES, 2)
    facts = {"she": she, "her": her, "band": w.word(), "album": w.word(), "home": home}
    t = _Timeline(w, w.rng.randint(1930, 1985))
    early = [
        f"{surname} was born in {home} in {t.year}.",
        f"At the age of {w.count(5, 11)}, {she} began to play the {w.pick(_INSTRUMENTS)}.",
        f"{her.capitalize()} teacher, {mentor}, introduced {him} to {genre} records.",
        f"{t.step(12, 16)}, {she} moved to {w.place()} to study music at the conservatory.",
    ]
    career = _musician_career(w, surname, t, facts)
    personal = [f"{surname} married the {w.pick(_OCCUPATIONS)} {partner} {t.when(1, 8)}.",
                f"They have {_plural(w.count(1, 4), 'child').replace('childs', 'children')} and live near "
                f"{home}."]
    style = [
        f"Critics have described the music of {surname} as a mix of {genre} and {other_genre}.",
        f"{she.capitalize()} has named {mentor}, {her} first teacher, as {her} most important influence.",
    ]
    intro = [
        f"{name} is {_indefinite(genre)} musician and songwriter from {home}.",
        f"{she.capitalize()} is best known as the founder of the band {facts['band']} and for the album "
        f"{facts['album']}.",
    ]
    discography = [f"{title} ( {year} )" for title, year in facts["albums"]]
    return name, [("", intro), ("Early life", early), ("Career", career), ("Personal life", personal),
                  ("Musical style", style), ("Discography", discography)]


def _scientist_article(w: _Writer) -> Article:
    first = w.pick(_FIRST_NAMES)
    name, home, university = f"{first} {w.word()}", w.place(), w.place()
    she, _, her = _pronouns(first)
    field, topic = w.pick(_FIELDS)
    surname, rival, medal, student = name.split()[1], w.person(), w.word(), w.person()
    t = _Timeline(w, w.rng.randint(1780, 1930))
    early = [
        f"{surname} was born in {home} in {t.year}, the {w.pick(['eldest', 'second', 'youngest'])} child of "
        f"{_indefinite(w.pick(['teacher', 'merchant', 'pharmacist', 'farmer', 'clockmaker']))}.",
        f"{t.step(16, 19)}, {she} entered the University of {university} to study {field}.",
        f"{her.capitalize()} doctoral thesis, completed {t.when(4, 6)}, dealt with {topic}.",
    ]
    thesis_year = t.year
    career = [
        f"{t.step(2, 8)}, {she} was appointed professor of {field} at {university}.",
        f"During these years, {surname} argued publicly with {rival} about the results of the thesis.",
        f"{t.step(3, 10)}, {surname} published the experiments that settled the dispute.",
        f"After that, {rival} accepted the conclusions, and the two later worked together.",
        f"Among the students of {surname} at {university} was {student}, who later continued this work.",
        f"{t.step(2, 12)}, {surname} received the {medal} Medal for {her} work on {topic}.",
    ]
    results_year = t.year
    later = [f"{surname} retired from teaching {t.when(8, 20)} and returned to {home}.",
             f"{she.capitalize()} died there {t.when(2, 15)}."]
    legacy = [
        f"The University of {university} named its {field} laboratory after {surname}.",
        f"A crater on the Moon and a street in {home} also bear {her} name.",
    ]
    works = [f"On {topic} ( {thesis_year} )", f"New experiments in {field} ( {results_year} )"]
    intro = [f"{name} was a scientist who worked in {field}.",
             f"{she.capitalize()} is remembered for {her} work on {topic}."]
    return name, [("", intro), ("Early life", early), ("Career", career), ("Later life", later),
                  ("Legacy", legacy), ("Selected works", works)]


_ARTICLE_BUILDERS: list[Callable[[_Writer], Article]] = [
    _town_article, _river_article, _ship_article, _musician_article, _scientist_article,
]
_LIST_SECTIONS = {"Notable people", "Discography", "Selected works"}


def _wikitext_spacing(sentence: str) -> str:
    """Tokenize like raw WikiText: split punctuation off and mark in-word separators with @x@."""
    text = re.sub(r"(\d),(\d)", r"\1 @,@ \2", sentence)
    text = re.sub(r"(\d)\.(\d)", r"\1 @.@ \2", text)
    text = re.sub(r"(\w)-(\w)", r"\1 @-@ \2", text)
    text = re.sub(r"(\w)'s\b", r"\1 's", text)
    text = re.sub(r"(\w)'(\s)", r"\1 '\2", text)
    text = re.sub(r"(?<!@)([,.;:()\"])(?!@)", r" \1 ", text)
    return " ".join(text.split())


def _paragraphs(heading: str, sentences: list[str], rng: random.Random) -> list[str]:
    """Group consecutive sentences into paragraphs of two to five sentences (list sections: one per line)."""
    if heading in _LIST_SECTIONS:
        return [_wikitext_spacing(item) for item in sentences]
    paragraphs, start = [], 0
    while start < len(sentences):
        size = rng.randint(2, 5)
        paragraphs.append(" ".join(_wikitext_spacing(s) for s in sentences[start:start + size]))
        start += size
    return paragraphs


def _article_lines(article: Article, rng: random.Random) -> list[str]:
    title, sections = article
    lines = [" ", f" = {_wikitext_spacing(title)} = ", " "]
    for heading, sentences in sections:
        if heading:
            lines += [" ", f" = = {heading} = = ", " "]
        lines += [f" {paragraph} " for paragraph in _paragraphs(heading, sentences, rng)]
    return lines


def generate_corpus(num_articles: int = 400, seed: int = 0) -> list[str]:
    """Return WikiText-format lines (without newline characters) for `num_articles` articles."""
    rng = random.Random(seed)
    writer = _Writer(rng)
    lines: list[str] = []
    for index in range(num_articles):
        builder = _ARTICLE_BUILDERS[index % len(_ARTICLE_BUILDERS)]
        lines += _article_lines(builder(writer), rng)
    return lines


def write_corpus(path: str | Path, num_articles: int = 400, seed: int = 0) -> Path:
    """Write the demo corpus to `path` as a raw WikiText file and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(generate_corpus(num_articles, seed)) + "\n", encoding="utf-8")
    return path
