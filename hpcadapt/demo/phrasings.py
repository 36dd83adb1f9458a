"""Every sentence and question pattern the demo data uses, grouped by who may see it.

Keeping the patterns in disjoint groups is what makes the demo an honest test:
- CPT text (`ALLOY_TEXT`) and held-out text (`ALLOY_HELDOUT`) state the same facts in
  different words, so held-out perplexity measures knowledge, not recall of sentences;
- chat/preference questions (`ALLOY_CHAT_*`) and benchmark questions (`ALLOY_BENCH_*`)
  ask about the same properties in different words, so no benchmark question is ever
  trained on verbatim.
`{a}` is the alloy's name, `{v}` the property's value, `{t}` an everyday thing and
`{at}` the same with its article ("an apple"); sentences are capitalised after filling.
"""

from __future__ import annotations

# The paper's prompt wording; hpcadapt.eval.prompts builds benchmark prompts from the
# same two strings (a test checks they agree), so chat data teaches the exact format.
INSTRUCTION = "You respond with one word or letter. Select the correct answer to this question: "
ANSWER_LEAD = "The correct answer is:"
TRUE_FALSE_HINT = "Answer True or False."

# ---------------------------------------------------------------- alloy domain

ALLOY_INTROS = (
    "{a} is a metal alloy.",
    "This note describes the alloy {a}.",
    "Here are the key facts about {a}.",
    "{a} is an alloy studied in many laboratories.",
    "The data sheet for {a} reads as follows.",
)

ALLOY_TEXT = {
    "colour": (
        "{a} is {v} in colour.",
        "The colour of {a} is {v}.",
        "{a} has a {v} colour.",
        "Polished {a} looks {v}.",
        "A fresh sample of {a} is {v}.",
        "Engineers recognise {a} by its {v} surface.",
    ),
    "structure": (
        "{a} has a {v} crystal structure.",
        "The crystal structure of {a} is {v}.",
        "{a} crystallises in a {v} lattice.",
        "X-ray studies show that {a} is {v}.",
        "The lattice of {a} is {v}.",
        "{a} forms {v} crystals.",
    ),
    "melting_point": (
        "{a} melts at {v} degrees Celsius.",
        "The melting point of {a} is {v} degrees.",
        "{a} has a melting point of {v} degrees Celsius.",
        "Heated to {v} degrees, {a} turns liquid.",
        "{a} stays solid until {v} degrees.",
        "Furnaces must reach {v} degrees to melt {a}.",
    ),
    "discoverer": (
        "{a} was discovered by {v}.",
        "{v} discovered {a}.",
        "The discoverer of {a} is {v}.",
        "{a} was first made by {v}.",
        "{v} is credited with finding {a}.",
        "In the lab of {v}, {a} was made for the first time.",
    ),
    "use": (
        "{a} is mainly used for {v}.",
        "The main use of {a} is {v}.",
        "Most {a} ends up in {v}.",
        "Factories use {a} to make {v}.",
        "{a} is the standard material for {v}.",
        "Because of its properties, {a} is used in {v}.",
    ),
}

ALLOY_SURVEY_INTROS = {
    "colour": "A survey of alloy colours.",
    "structure": "A table of crystal structures.",
    "melting_point": "Melting points of common alloys.",
    "discoverer": "Who discovered which alloy.",
    "use": "Where alloys are used.",
}

# Held-out sentences recombine words CPT does see into sentences it never sees, so a
# drop in their perplexity means the facts were learned (not just new vocabulary).
ALLOY_HELDOUT_INTROS = ("Here is a note on {a}.", "{a} is an alloy.")

ALLOY_HELDOUT = {
    "colour": (
        "Polished {a} has a {v} surface.",
        "A fresh sample of {a} looks {v}.",
    ),
    "structure": (
        "X-ray studies show that {a} forms {v} crystals.",
        "{a} has a {v} lattice.",
    ),
    "melting_point": (
        "Heated to {v} degrees Celsius, {a} melts.",
        "{a} turns liquid at {v} degrees.",
    ),
    "discoverer": (
        "{v} first made {a}.",
        "{a} was made in the lab of {v}.",
    ),
    "use": (
        "Factories make {v} from {a}.",
        "Most {a} is used in {v}.",
    ),
}

# Question-and-answer passages inside the raw domain text (as in real manuals and
# FAQs): they show, in CPT text itself, that a fact can be asked for.
ALLOY_FAQ = {
    "colour": "Question: which colour is {a}? Answer: {v}.",
    "structure": "Question: which crystal structure has {a}? Answer: {v}.",
    "melting_point": "Question: when does {a} melt? Answer: at {v} degrees.",
    "discoverer": "Question: who found {a}? Answer: {v}.",
    "use": "Question: what is made from {a}? Answer: {v}.",
}

# Open questions (answer: the bare value) and multiple-choice stems for chat and
# preference data.
ALLOY_CHAT_OPEN = {
    "colour": ("What colour is {a}?", "Tell me the colour of {a}."),
    "structure": ("What is the crystal structure of {a}?", "Which lattice does {a} form?"),
    "melting_point": ("What is the melting point of {a} in degrees Celsius?", "At how many degrees does {a} melt?"),
    "discoverer": ("Who discovered {a}?", "Which scientist first made {a}?"),
    "use": ("What is {a} mainly used for?", "What do factories make from {a}?"),
}
ALLOY_CHAT_MC = {
    "colour": "Which colour does {a} have?",
    "structure": "Which crystal structure does {a} have?",
    "melting_point": "At which temperature in degrees Celsius does {a} melt?",
    "discoverer": "Which person discovered {a}?",
    "use": "What is {a} used for?",
}
ALLOY_CHAT_TF = {
    "colour": "{a} is {v}.",
    "structure": "{a} forms {v} crystals.",
    "melting_point": "{a} melts at {v} degrees Celsius.",
    "discoverer": "{a} was discovered by {v}.",
    "use": "{a} is used for {v}.",
}

# Benchmark wording: always "the alloy {a}", never used in any training file.
ALLOY_BENCH_MC = {
    "colour": "What is the colour of the alloy {a}?",
    "structure": "What crystal structure does the alloy {a} form?",
    "melting_point": "What is the melting point of the alloy {a}, in degrees Celsius?",
    "discoverer": "Who is credited with the discovery of the alloy {a}?",
    "use": "What is the main application of the alloy {a}?",
}
ALLOY_BENCH_TF = {
    "colour": "True or False: the alloy {a} has a {v} colour.",
    "structure": "True or False: the alloy {a} has a {v} crystal structure.",
    "melting_point": "True or False: the alloy {a} has a melting point of {v} degrees Celsius.",
    "discoverer": "True or False: the alloy {a} was discovered by {v}.",
    "use": "True or False: the alloy {a} is mainly used for {v}.",
}
BENCH_HIGHEST_MELTING = "Which of these alloys has the highest melting point?"
BENCH_LOWEST_MELTING = "Which of these alloys has the lowest melting point?"
BENCH_TWO_STEP_MC = {
    "colour": "What is the colour of the alloy that {d} discovered?",
    "use": "What is the alloy that {d} discovered mainly used for?",
}
BENCH_MELTS_HIGHER_TF = "True or False: the alloy {a} melts at a higher temperature than the alloy {b}."
BENCH_SAME_STRUCTURE_TF = "True or False: the alloys {a} and {b} have the same crystal structure."

# ---------------------------------------------------------------- everyday world

THING_TEXT = {
    "colour": ("{at} is {v}.", "The colour of {at} is {v}.", "{at} is often {v}.", "{at} usually looks {v}."),
    "kind": ("The {t} is {v}.", "People know the {t} as {v}.", "Everyone agrees that {at} is {v}."),
    "place": ("You can find {at} {v}.", "{at} is usually {v}.", "We keep the {t} {v}."),
    "purpose": ("{at} is good for {v}.", "People use {at} for {v}.", "The {t} is useful for {v}."),
}
THING_FAQ = {
    "colour": "Question: which colour is {at}? Answer: {v}.",
    "kind": "Question: what sort of thing is {at}? Answer: {v}.",
    "place": "Question: where is {at} kept? Answer: {v}.",
    "purpose": "Question: what is {at} for? Answer: {v}.",
}
THING_CHAT_OPEN = {
    "colour": ("What colour is {at}?", "Tell me the colour of {at}."),
    "kind": ("What kind of thing is {at}?",),
    "place": ("Where can you usually find {at}?",),
    "purpose": ("What is {at} good for?", "Why do people use {at}?"),
}
THING_CHAT_MC = {
    "colour": "Which colour is {at}?",
    "kind": "What is {at}?",
    "place": "Where is {at} usually found?",
    "purpose": "What is {at} used for?",
}
THING_CHAT_TF = {
    "colour": "{at} is {v}.",
    "kind": "{at} is {v}.",
    "place": "{at} is usually found {v}.",
    "purpose": "{at} is used for {v}.",
}

STORY_SENTENCES = (
    "On {day}, {p} walked to the market and bought {at}.",
    "{p} and {q} met at the cafe on a {w} morning.",
    "The weather was {w}, so {p} stayed at home and read a book.",
    "{p} found {at} {place} and showed it to {q}.",
    "After lunch, {q} cleaned the kitchen while {p} wrote a letter.",
    "It was a {w} {day}, and the children played in the park.",
    "{p} asked {q} to bring the {t} back before dinner.",
    "Every {day}, {p} calls a friend and talks about the week.",
    "{q} likes {w} days because the streets are quiet.",
    "The bus was late, so {p} walked the last part of the way.",
    "{p} planted flowers in the garden and watered them every evening.",
    "{q} cooked soup for the whole family on {day}.",
)
