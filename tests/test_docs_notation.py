"""The notation of docs/ against the two notation tables at the end of docs/README.md.

The first table holds the symbols with one meaning across every document; the second,
"Symbols of one document", the symbols that belong to one derivation, each with its document.
These tests keep the documents and the tables in step:

1. every symbol of either table is used (no stale rows), a local one in its own document, and
   no symbol is in both tables;
2. every Greek letter, capital Latin letter and letter in a font of its own (\\mathcal{L},
   \\mathbb{E}, \\mathbf 1) used in the math of a document, or of the README's table of
   equations, is in one of the tables;
3. a symbol registered as local to one document appears in no other document;
4. the spellings that once meant two things (issue 13) stay gone.

Lowercase Latin letters are not checked by 2: many of them are indices or variables bound in one
formula or paragraph (t, i, r, s), d is also the differential, e Euler's number; the table lists
the lowercase letters that carry a meaning across documents, and 3 applies to any letter the
second table lists. The last tests run the checkers on small made-up inputs, to show each can fail.
"""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOCUMENTS = sorted(p for p in DOCS.glob("*.md") if p.name != "README.md")
README = (DOCS / "README.md").read_text()
LOCAL_HEADING = "### Symbols of one document"


# --------------------------------------------------------------------------- reading math

_CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.S | re.M)
# An inline formula may run over a line break of its paragraph, never over a blank line.
_FORMULA = re.compile(r"\$\$(.+?)\$\$|\$((?:[^$\n]|\n(?![ \t]*\n))+?)\$", re.S)
GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
    "pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega "
    "Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega".split())
_NAME = re.compile(r"\\(?:text|textrm|texttt|textbf|mathrm|mathtt|mathsf|operatorname|tag|begin|end)"
                   r"\s*(?:\{[^{}]*\}|[A-Za-z0-9])")
_FONT = re.compile(r"\\(mathcal|mathbb|mathbf|boldsymbol)\s*(?:\{\s*([A-Za-z0-9])\s*\}|([A-Za-z0-9]))")
_COMMAND = re.compile(r"\\([A-Za-z]+)")


def formulas(text):
    """Every inline and display formula of a Markdown text; code spans and blocks are not math."""
    return [a or b for a, b in _FORMULA.findall(_CODE.sub(" ", text))]


def math_of(text):
    return " ".join(formulas(text))


def symbols(formula):
    """The symbols of a formula: Greek letters (\\tau), letters in a font of their own
    (\\mathcal{L}, \\mathbb{E}, \\mathbf{1}) and single Latin letters. Upright names (\\mathrm{KL},
    \\operatorname{diag}, \\text{...}) and other commands (\\log, \\sum, \\top) are not symbols; a
    decoration (\\hat, \\tilde, \\bar, a prime) keeps its letter's symbol; a subscript is a symbol
    of its own (G_C holds G and C)."""
    found = []

    def font(m):
        found.append(f"\\{m.group(1)}{{{m.group(2) or m.group(3)}}}")
        return " "

    def command(m):
        if m.group(1) in GREEK:
            found.append("\\" + m.group(1))
        return " "

    text = _FONT.sub(font, _NAME.sub(" ", formula))
    text = _COMMAND.sub(command, text)
    return found + re.findall(r"[A-Za-z]", text)


def checked(symbol):
    """Whether rule 2 applies: Greek, capital Latin, or a letter in a font of its own."""
    return symbol.startswith("\\") or symbol.isupper()


def symbols_by_document(texts):
    return {name: set(symbols(math_of(text))) for name, text in texts.items()}


# --------------------------------------------------------------------------- the two tables

def _rows(table_text):
    return [line for line in table_text.splitlines() if line.startswith("| $")]


def notation_tables(readme=README):
    """(rows of the table of general symbols, rows of the table of symbols of one document)."""
    section = readme.split("## Notation", 1)[1]
    general, _, local = section.partition(LOCAL_HEADING)
    return _rows(general), _rows(local)


def first_cell(row):
    return row.split(" | ")[0][2:]


def local_entries(readme=README):
    """(symbol, document) for every symbol of the table of symbols of one document."""
    entries = []
    for row in notation_tables(readme)[1]:
        document = re.search(r"([A-Za-z0-9_\-]+\.md)", row.split(" | ")[1]).group(1)
        entries += [(s, document) for f in formulas(first_cell(row)) for s in symbols(f)]
    return entries


def registry(readme=README):
    """(general symbols, {local symbol: its document}) as the README's tables define them."""
    general = {s for row in notation_tables(readme)[0] for f in formulas(first_cell(row)) for s in symbols(f)}
    return general, dict(local_entries(readme))


# --------------------------------------------------------------------------- the checkers

def unregistered(used, general, local):
    """Rule 2. used: {document: symbols}; returns 'document: symbol' for every checked symbol
    that neither table holds."""
    return sorted(f"{doc}: {s}" for doc, found in used.items() for s in found
                  if checked(s) and s not in general and s not in local)


def misplaced(used, local):
    """Rule 3: 'document: symbol (local to other.md)' for a local symbol used elsewhere."""
    return sorted(f"{doc}: {s} (local to {local[s]})" for doc, found in used.items() for s in found
                  if s in local and local[s] != doc)


def stale(used, general, local):
    """Rule 1: symbols of the tables that no document uses (a local one: not its own document)."""
    everywhere = set().union(*used.values())
    return sorted([f"{s} (general)" for s in general if s not in everywhere]
                  + [f"{s} ({doc})" for s, doc in local.items() if s not in used.get(doc, ())])


GENERAL, LOCAL = registry()
USED = symbols_by_document({p.name: p.read_text() for p in DOCUMENTS})


# --------------------------------------------------------------------------- the tests

def test_the_tables_exist_and_are_not_empty():
    general_rows, local_rows = notation_tables()
    assert len(general_rows) >= 25 and len(local_rows) >= 15
    assert all(doc in USED for doc in LOCAL.values()), "a local symbol names a document that does not exist"


def test_every_symbol_of_the_tables_is_used():
    assert not stale(USED, GENERAL, LOCAL), "in the notation tables but never used as stated"


def test_no_symbol_is_both_general_and_local():
    assert not sorted(set(LOCAL) & GENERAL)


def test_each_local_symbol_belongs_to_one_document():
    symbols_listed = [s for s, _ in local_entries()]
    assert not sorted({s for s in symbols_listed if symbols_listed.count(s) > 1}), "listed twice"


@pytest.mark.parametrize("document", sorted(USED))
def test_every_symbol_is_registered(document):
    problems = unregistered({document: USED[document]}, GENERAL, LOCAL)
    assert not problems, f"not in docs/README.md's notation tables: {problems}"


def test_every_symbol_of_the_equation_table_is_registered():
    summary = README.split("## Notation", 1)[0]
    problems = unregistered({"README.md": set(symbols(math_of(summary)))}, GENERAL, LOCAL)
    assert not problems, f"not in the notation tables: {problems}"


@pytest.mark.parametrize("document", sorted(USED))
def test_symbols_of_one_document_stay_there(document):
    problems = misplaced({document: USED[document]}, LOCAL)
    assert not problems, f"a symbol of one document used in another: {problems}"


# The spellings that had two meanings before (issue 13), and what replaced them.
RETIRED = {
    r"(?<![\\a-zA-Z])L\s*L\^": "the Cholesky factor is G (L counts samples)",
    r"\\epsilon\b": "the reparameterisation noise is \\varepsilon; unit roundoff is u",
    r"\\lambda_\{?[1-9j]": "eigenvalues are \\kappa_d (lambda is the observation variance)",
    r"\\mathcal\{?L\}?_k\b": "the bound is \\mathcal{L}_K with K samples (k is their index)",
    r"\\sigma\s*(?:\(|'|\\[bB]ig|\\left)": "the sigmoid is \\operatorname{sigmoid}; sigma a standard deviation",
}


@pytest.mark.parametrize("pattern", RETIRED)
def test_retired_spellings_stay_gone(pattern):
    texts = [(p.name, p.read_text()) for p in DOCUMENTS]
    texts.append(("README.md", README.split("## Notation", 1)[0]))
    hits = [f"{name}: {m.group(0)!r}" for name, text in texts for m in re.finditer(pattern, math_of(text))]
    assert not hits, f"{RETIRED[pattern]}: {hits}"


# --------------------------------------------------------------------------- the checkers can fail

MADE_UP_README = r"""
## Notation

| symbol | meaning |
|---|---|
| $x$ | a datapoint |
| $\tau$ | a temperature |

### Symbols of one document

| symbol | document | meaning |
|---|---|---|
| $\Gamma$ | [a.md](a.md) | a diagonal matrix |
"""


def test_reading_formulas_and_symbols():
    text = ("Prose $a_1$ and\n$\\tilde X_{\\mathrm{col}}$ `$not math$`\n\n"
            "$$\n\\mathcal{L}_K = \\log p\\tag{I4}\n$$")
    assert formulas(text) == ["a_1", "\\tilde X_{\\mathrm{col}}", "\n\\mathcal{L}_K = \\log p\\tag{I4}\n"]
    assert symbols(r"\hat{\mathcal L}_K \ne \operatorname{diag}(e^{v/2}) + \Gamma_j \mathbf 1^\top") == [
        "\\mathcal{L}", "\\mathbf{1}", "\\Gamma", "K", "e", "v", "j"]
    assert formulas("a $x$\n\nand $y$") == ["x", "y"]       # never across a blank line
    assert symbols(r"W_{\mathrm d} + \mathrm{KL}_T") == ["W", "T"]


def test_the_checkers_catch_made_up_clashes():
    general, local = registry(MADE_UP_README)
    assert general == {"x", "\\tau"} and local == {"\\Gamma": "a.md"}
    twice = MADE_UP_README + "| $\\Gamma$ | [b.md](b.md) | again |\n"
    assert local_entries(twice) == [("\\Gamma", "a.md"), ("\\Gamma", "b.md")]
    used = symbols_by_document({"a.md": r"$\Gamma x + \tau$", "b.md": r"$\Gamma^\top x + \rho + Q$"})
    assert unregistered(used, general, local) == ["b.md: Q", "b.md: \\rho"]
    assert misplaced(used, local) == ["b.md: \\Gamma (local to a.md)"]
    assert stale(used, general, local) == []
    unused = symbols_by_document({"b.md": "$x$"})
    assert stale(unused, general, local) == ["\\Gamma (a.md)", "\\tau (general)"]
    clean = symbols_by_document({"a.md": r"$\Gamma x$", "b.md": r"$\tau\,x$"})
    assert unregistered(clean, general, local) == misplaced(clean, local) == []
