"""Text helpers for the offline parser: accent folding that keeps offsets, and the small lexicons.

Every pattern in the offline parser runs on :func:`fold` of the text, which lower-cases and strips accents
one character for one character, so a match's offsets slice the original text unchanged ("Mañana" and
"manana" match the same pattern, and the title keeps the user's "ñ").
"""

from __future__ import annotations

import re
import unicodedata


def wordset(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text``: lexicons read as prose, not as long literals."""
    return frozenset(text.split())


def fold(text: str) -> str:
    """Lower-case, accent-free copy of ``text`` with exactly the same length (offsets stay valid)."""
    out = []
    for char in text:
        base = unicodedata.normalize("NFD", char)[0].lower()[:1] or char
        out.append(base if len(base) == 1 else char)
    return "".join(out)


# Spanish tells: accented letters, inverted marks, and frequent function words.
_SPANISH_WORDS = wordset(
    "el la los las de del para y con una unos unas que por hoy manana horas hora dias dia semana "
    "necesitamos hay tenemos es urgente prioridad cada total agregar crear actualizar migrar revisar "
    "arreglar lunes martes miercoles jueves viernes sabado domingo en al su sus mas"
)
_ENGLISH_WORDS = wordset(
    "the and to of for by on in a an with today tomorrow hours hour days day need should take "
    "about each total add fix write build create update monday tuesday wednesday thursday friday "
    "saturday sunday it this that is"
)


def is_spanish(text: str) -> bool:
    """Whether ``text`` reads as Spanish (decides verb heuristics and the summary's language)."""
    if re.search(r"[ñ¿¡]|ción\b|ará\b", text.lower()):
        return True
    words = re.findall(r"[a-z]+", fold(text))
    spanish = sum(word in _SPANISH_WORDS for word in words)
    english = sum(word in _ENGLISH_WORDS for word in words)
    return spanish > english


# Imperative / infinitive verbs that open an English work item. A conjunct that starts with one of them
# has its own verb; one that does not borrows the previous item's ("add login page and user dashboard").
ENGLISH_VERBS = wordset(
    """
    add adjust analyse analyze announce answer apply approve archive arrange ask assign audit automate
    back book brainstorm bring build bump buy calculate call cancel change check choose clean clear close
    code collect combine communicate compare compile complete configure confirm connect contact convert copy
    correct create customize cut debug decide define delete deliver deploy deprecate describe design
    develop disable discuss do document draft drop edit email enable enforce ensure estimate evaluate
    expand explain explore export extend extract figure file fill finalize finalise find finish fix follow
    get give go handle harden help hire host identify implement import improve increase index inform
    install integrate interview investigate invite launch learn list load localize localise log look
    maintain make manage map mark measure meet merge migrate mock modify monitor move negotiate notify
    onboard open optimize optimise order organize organise outline pay perform pick plan polish post
    prepare present print prioritize prioritise process produce profile promote propose protect prototype
    provide publish purchase push put query raise reach read rebuild record redesign redo reduce refactor
    refine reach release remove rename reorganize repair replace reply report request research reset resolve
    respond restore restructure retest review revise rewrite roll run save scale schedule scope secure
    send set setup ship show sign simplify sketch sort speed split start stop store streamline study
    submit summarize summarise support switch sync take talk tell test track train transfer translate
    triage troubleshoot try tune turn undo uninstall unify update upgrade upload validate verify visit
    wire wrap write
    """
)

# Words that are verbs only when an object follows with a determiner ("test the API", "design a logo");
# otherwise they start a noun phrase ("test fixtures", "design review", "email templates").
AMBIGUOUS_VERBS = wordset(
    "test design email report document plan schedule list log record order file map index profile "
    "support track query process request mock export import upload sketch scope host draft outline "
    "answer"
)

# Particles that belong to a phrasal verb and travel with it when the verb is shared ("set up X and Y").
PHRASAL_PARTICLES = wordset("up out into over through back off down on")

DETERMINERS = wordset(
    "the a an our my your their its this that these those all some every each any both new "
    "el la los las un una unos unas nuestro nuestra nuestros nuestras mi mis su sus este esta estos "
    "estas todo toda todos todas nuevo nueva nuevos nuevas lo le les"
)

_SPANISH_IMPERATIVES = wordset(
    """
    crea agrega anade arregla revisa haz envia llama actualiza migra prepara escribe disena implementa
    corrige sube elimina borra configura instala despliega prueba documenta traduce mueve limpia cambia
    mejora optimiza integra compra contacta organiza termina completa verifica valida publica lanza define
    programa agenda reserva paga factura manda investiga analiza automatiza conecta construye desarrolla
    """
)
_SPANISH_ER_VERBS = wordset(
    """
    hacer rehacer deshacer poner componer proponer disponer exponer reponer mover remover promover
    resolver devolver volver envolver establecer ofrecer obtener mantener proteger recoger escoger
    responder vender leer ver prever entender aprender atender extender encender suspender conocer
    reconocer agradecer fortalecer crecer traer detener contener retener sostener tener correr barrer
    romper meter someter emprender comprender coser cocer vencer convencer ejercer satisfacer
    """
)
_SPANISH_AR_IR_NOUNS = wordset(
    """
    lugar hogar bar par mar altar azucar collar militar popular similar particular regular familiar
    auxiliar celular titular solar escolar modular singular circular tabular dolar radar avatar calendar
    sidebar navbar toolbar star pilar hangar nectar angular nadir tapir elixir emir mir
    """
)
_CLITIC = r"(?:lo|la|los|las|le|les|se|me|nos)?"


def _spanish_verb(word: str) -> bool:
    if word in _SPANISH_IMPERATIVES or word in _SPANISH_ER_VERBS:
        return True
    bare = re.sub(_CLITIC + "$", "", word) if re.search(r"(?:ar|er|ir)" + _CLITIC + "$", word) else word
    if bare in _SPANISH_ER_VERBS:
        return True
    if len(bare) >= 4 and re.search(r"(?:ar|ir)$", bare) and bare not in _SPANISH_AR_IR_NOUNS:
        return True
    return bool(len(bare) >= 5 and re.search(r"(?:ecer|ener|oner)$", bare))


def starts_with_verb(words: list[str], spanish: bool, *, initial: bool = False) -> bool:
    """Whether a conjunct (folded words) opens with its own verb, so it must not borrow one.

    ``initial``: the sentence's first item, where an ambiguous word is read as an imperative
    ("Test the login", "Design landing page").
    """
    if not words:
        return False
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    if first in DETERMINERS:
        return False
    if first in AMBIGUOUS_VERBS:
        return (
            initial or second == "" or second in DETERMINERS or second in {"it", "them", "with", "to", "for"}
        )
    if first in ENGLISH_VERBS:
        return True
    if _spanish_verb(first) and (spanish or second in DETERMINERS):
        return True
    if len(first) > 5 and re.search(r"(?:ize|ise|ify)$", first):
        return True
    # An unknown word followed by a determiner is most likely a verb we do not list ("rewire the router").
    return second in DETERMINERS and second not in {"new", "all", "each", "every", "both"}


def verb_phrase(words: list[str], original_words: list[str]) -> str:
    """The verb (with its particle, "set up") that opens a conjunct, in the user's spelling."""
    take = 1
    if len(words) > 1 and words[1] in PHRASAL_PARTICLES and words[0] in ENGLISH_VERBS:
        take = 2
    return " ".join(original_words[:take])
