"""The two small worlds the demo's data talks about: everyday things and fictional alloys.

The everyday world is what the tiny Base/Instruct models learn first; the alloy world
is the "technical domain" they are adapted to. Both are described by the same kind of
facts (an entity has a colour, is used for something, ...) so that the habit the
Instruct model learns on everyday facts (read a fact in text, answer a question about
it) is the habit CPT then has to reuse on alloys it has never seen.

Everything here is plain data or a function of a `random.Random`, so the same seed
gives the same world on any machine (no `hash()`, no set iteration order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# ---------------------------------------------------------------- everyday world


@dataclass(frozen=True)
class Thing:
    """An everyday object, food or animal with a few well-known properties."""

    name: str  # singular noun, e.g. "banana"
    colour: str
    kind: str  # with its article: "a fruit", "an animal", ...
    place: str  # where you usually find it, as a phrase: "in the kitchen"
    purpose: str  # what it is good for, as a gerund phrase: "making soup"


THINGS: tuple[Thing, ...] = (
    Thing("apple", "red", "a fruit", "in the orchard", "making pie"),
    Thing("banana", "yellow", "a fruit", "at the market", "a quick breakfast"),
    Thing("grape", "purple", "a fruit", "in the vineyard", "making juice"),
    Thing("plum", "purple", "a fruit", "in the orchard", "making jam"),
    Thing("lemon", "yellow", "a fruit", "at the market", "making lemonade"),
    Thing("carrot", "orange", "a vegetable", "in the garden", "making soup"),
    Thing("lettuce", "green", "a vegetable", "in the garden", "making salad"),
    Thing("tomato", "red", "a vegetable", "in the garden", "making sauce"),
    Thing("cucumber", "green", "a vegetable", "in the garden", "making pickles"),
    Thing("bagel", "brown", "a food", "at the bakery", "making toast"),
    Thing("cheese", "yellow", "a food", "in the fridge", "making sandwiches"),
    Thing("egg", "white", "a food", "in the fridge", "making cakes"),
    Thing("chestnut", "brown", "a nut", "in the forest", "roasting in winter"),
    Thing("cat", "black", "an animal", "on the sofa", "catching mice"),
    Thing("dog", "brown", "an animal", "in the yard", "guarding the house"),
    Thing("cow", "white", "an animal", "on the farm", "giving milk"),
    Thing("hen", "brown", "a bird", "on the farm", "laying eggs"),
    Thing("sheep", "white", "an animal", "on the hill", "giving wool"),
    Thing("horse", "brown", "an animal", "in the stable", "pulling carts"),
    Thing("bee", "yellow", "an insect", "in the meadow", "making honey"),
    Thing("frog", "green", "an animal", "by the pond", "catching flies"),
    Thing("owl", "grey", "a bird", "in the forest", "hunting at night"),
    Thing("fox", "orange", "an animal", "in the forest", "hunting rabbits"),
    Thing("swan", "white", "a bird", "on the lake", "gliding on water"),
    Thing("hammer", "grey", "a tool", "in the workshop", "driving nails"),
    Thing("broom", "brown", "a tool", "in the closet", "sweeping floors"),
    Thing("knife", "silver", "a tool", "in the drawer", "cutting bread"),
    Thing("ladder", "grey", "a tool", "in the shed", "reaching high shelves"),
    Thing("pencil", "yellow", "a tool", "on the desk", "writing notes"),
    Thing("kettle", "silver", "an appliance", "in the kitchen", "boiling water"),
    Thing("spoon", "silver", "a utensil", "in the kitchen", "eating soup"),
    Thing("towel", "blue", "a cloth", "in the bathroom", "drying your hands"),
    Thing("pillow", "white", "a bedding", "in the bedroom", "resting your head"),
    Thing("umbrella", "black", "an accessory", "in the hallway", "staying dry in the rain"),
    Thing("bicycle", "blue", "a vehicle", "on the street", "riding to work"),
    Thing("bus", "yellow", "a vehicle", "on the road", "carrying passengers"),
    Thing("boat", "white", "a vehicle", "in the harbour", "crossing the lake"),
    Thing("candle", "white", "a light", "on the table", "lighting a dark room"),
)

PEOPLE = ("Anna", "Ben", "Clara", "David", "Ella", "Frank", "Grace", "Henry", "Ivy", "Jack", "Lucy", "Max")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEATHER = ("sunny", "rainy", "cold", "warm", "windy", "cloudy")
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("old", "new"), ("up", "down"),
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# ---------------------------------------------------------------- alloy world

ALLOY_COLOURS = ("blue", "green", "red", "silver", "golden", "black", "white", "violet")
CRYSTAL_STRUCTURES = ("cubic", "hexagonal", "tetragonal", "orthorhombic", "monoclinic", "rhombohedral")
MELTING_POINTS = (640, 910, 1180, 1450, 1720, 1990, 2260, 2530)  # degrees Celsius
ALLOY_USES = (
    "turbine blades", "battery anodes", "surgical implants", "heat shields",
    "magnetic sensors", "mirror coatings", "rail tracks", "ship hulls",
)
FIRST_NAMES = (
    "Orla",
    "Tamsin",
    "Idris",
    "Mireille",
    "Kofi",
    "Annika",
    "Ravi",
    "Sunniva",
    "Teodor",
    "Yusra",
    "Bram",
    "Liesel",
)
LAST_NAMES = (
    "Venn",
    "Okafor",
    "Halvorsen",
    "Marchetti",
    "Quist",
    "Barlowe",
    "Tanaka",
    "Oyelaran",
    "Dufresne",
    "Kaur",
    "Ebberly",
    "Soranzo",
)
NAME_ONSETS = (
    "Var",
    "Kel",
    "Tor",
    "Zem",
    "Quor",
    "Bel",
    "Drax",
    "Ful",
    "Yst",
    "Mor",
    "Pel",
    "Sarn",
    "Vex",
    "Hald",
    "Nir",
    "Oss",
    "Crim",
    "Wend",
    "Gorv",
    "Lum",
    "Thal",
    "Jask",
    "Rhen",
    "Obr",
    "Cald",
    "Ewl",
    "Spal",
    "Troz",
)
NAME_SUFFIXES = ("ium", "ite", "alloy", "ine", "ex", "on")


@dataclass(frozen=True)
class Alloy:
    """A fictional alloy: every property is what the domain text teaches about it."""

    name: str
    colour: str
    structure: str
    melting_point: int
    discoverer: str  # unique per alloy, so "the alloy Orla Venn discovered" names one alloy
    use: str


ALLOY_PROPERTIES = ("colour", "structure", "melting_point", "discoverer", "use")


def make_alloys(rng: random.Random, count: int) -> list[Alloy]:
    """`count` alloys with distinct names and discoverers and randomly drawn properties."""
    # One onset per alloy: names that differ only in their ending confuse a tiny model.
    if not 4 <= count <= len(NAME_ONSETS):
        raise ValueError(f"alloy count must be between 4 and {len(NAME_ONSETS)} (one name onset each), got {count}")
    onsets = rng.sample(NAME_ONSETS, count)
    chosen_names = [onset + rng.choice(NAME_SUFFIXES) for onset in onsets]
    # Each (first, last) pairing is used once, so every discoverer names one alloy.
    firsts, lasts = rng.sample(FIRST_NAMES, len(FIRST_NAMES)), rng.sample(LAST_NAMES, len(LAST_NAMES))
    discoverers = [f"{firsts[i % len(firsts)]} {lasts[(i + i // len(lasts)) % len(lasts)]}" for i in range(count)]
    return [
        Alloy(
            name=name,
            colour=rng.choice(ALLOY_COLOURS),
            structure=rng.choice(CRYSTAL_STRUCTURES),
            melting_point=rng.choice(MELTING_POINTS),
            discoverer=discoverers[i],
            use=rng.choice(ALLOY_USES),
        )
        for i, name in enumerate(chosen_names)
    ]


def property_values(prop: str, alloys: list[Alloy]) -> tuple[str, ...]:
    """Every value a property can take, as text, for drawing plausible wrong answers.

    Wrong discoverers are the other alloys' discoverers, so a wrong name is never one
    the model has simply never seen.
    """
    if prop == "colour":
        return ALLOY_COLOURS
    if prop == "structure":
        return CRYSTAL_STRUCTURES
    if prop == "melting_point":
        return tuple(str(value) for value in MELTING_POINTS)
    if prop == "use":
        return ALLOY_USES
    if prop == "discoverer":
        return tuple(alloy.discoverer for alloy in alloys)
    raise KeyError(f"unknown alloy property {prop!r}; expected one of {ALLOY_PROPERTIES}")


def property_text(alloy: Alloy, prop: str) -> str:
    """The alloy's value of `prop` as it appears in text and answers."""
    return str(getattr(alloy, prop))
