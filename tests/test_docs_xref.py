"""Cross-references between the code and the derivations in docs/.

The code cites a derivation as ``Eq. (K2), docs/kl.md``. A document labels each display
equation with ``\\tag{K2}`` inside its ``$$ ... $$`` block and follows the block with

    Implemented by: `numpyvae.distributions.kl_diag_gaussian_standard`, `...`

or ``Implemented by: (definition only)``. These tests keep the two sides in step:

1. every citation in numpyvae/**/*.py, tests/*.py and tutorials/**/*.py names a tag that
   exists in the cited document (a short citation ``Eq. (E3)`` must name a tag that exists
   in exactly one document);
2. every name in an ``Implemented by:`` line imports, and is spelled where it is defined
   (``numpyvae.model.VAE``, not the re-export ``numpyvae.VAE``);
3. both ways: the source of every listed object cites the equation, and every function,
   method or class of numpyvae whose source cites an equation is listed under it. A citation
   belongs to the innermost function, method or class around it (a class docstring belongs
   to the class; a function nested inside a function belongs to the outer one); citations
   at module level (module docstrings) are overviews and only have to satisfy rule 1;
4. labels are well formed, sit inside ``$$`` blocks, are unique across docs/ (so a short
   citation is unambiguous), and each has an ``Implemented by:`` line.

Also: docs/README.md's table lists every label with its document and the same
implementers, and every relative link in docs/ points to a file that exists.

The last tests run the same checkers on small made-up inputs, to show each one can fail.
"""

import ast
import importlib
import inspect
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = "numpyvae"

# The derivation documents and the label letters each one owns.
EXPECTED_DOCS = {
    "README.md": "", "elbo.md": "E", "kl.md": "KF", "distributions.md": "GL",
    "reparameterization.md": "R", "importance.md": "I", "backprop.md": "B", "gradcheck.md": "C",
    "estimators.md": "STV", "ppca.md": "PQA", "autoencoders.md": "D",
    "discrete.md": "H",
    "convolution.md": "J",
}

LABEL = r"[A-Z][0-9]+"
CITE_RE = re.compile(r"Eq\.\s*\((" + LABEL + r")\),\s*docs/([A-Za-z0-9_\-]+\.md)")
SHORT_CITE_RE = re.compile(r"Eq\.\s*\((" + LABEL + r")\)(?!,\s*docs/)")
TAG_RE = re.compile(r"\\tag\{([^}]*)\}")
IMPL_PREFIX = "Implemented by:"
DEFINITION_ONLY = "(definition only)"
NAME = r"`[A-Za-z_][A-Za-z0-9_.]*`"
NAMES_RE = re.compile(NAME + r"(?:, " + NAME + r")*")
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


# --------------------------------------------------------------------------- documents

@dataclass
class Equation:
    label: str
    doc: str                     # file name inside docs/, e.g. "kl.md"
    line: int                    # line of the \tag
    block_end: int               # line of the closing $$
    names: list = None           # None: no Implemented-by line; []: definition only
    impl_line: int = None


@dataclass
class Doc:
    name: str
    equations: list = field(default_factory=list)
    problems: list = field(default_factory=list)


def parse_doc(text, name):
    """Labelled equations of one Markdown document, and what is wrong with its format."""
    doc = Doc(name)
    lines = text.splitlines()
    where = f"docs/{name}"
    consumed = set()  # Implemented-by lines that belong to a labelled block
    in_fence = False
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("```") or s.startswith("~~~"):
            in_fence = not in_fence
            i += 1
            continue
        if in_fence:
            i += 1
            continue
        if s.startswith("$$"):
            start = i
            if len(s) >= 4 and s.endswith("$$"):          # $$ ... $$ on one line
                end = i
            else:
                end = i + 1
                while end < len(lines) and not lines[end].strip().endswith("$$"):
                    end += 1
                if end == len(lines):
                    doc.problems.append(f"{where}:{start + 1}: the $$ block opened here is never closed")
                    break
            block = lines[start:end + 1]
            tags = [(start + k + 1, t) for k, ln in enumerate(block) for t in TAG_RE.findall(ln)]
            if len(tags) > 1:
                doc.problems.append(f"{where}:{start + 1}: one $$ block carries several tags "
                                    f"{[t for _, t in tags]}; give each equation its own block")
            for line_no, tag in tags:
                if not re.fullmatch(LABEL, tag):
                    doc.problems.append(f"{where}:{line_no}: \\tag{{{tag}}} is not a label of the form "
                                        "capital letter + number, e.g. \\tag{K2}")
                    continue
                eq = Equation(tag, name, line_no, end + 1)
                k = end + 1
                while k < len(lines) and not lines[k].strip():
                    k += 1
                if k < len(lines) and lines[k].startswith(IMPL_PREFIX):
                    consumed.add(k)
                    eq.impl_line = k + 1
                    rest = lines[k][len(IMPL_PREFIX):].strip()
                    if rest == DEFINITION_ONLY:
                        eq.names = []
                    elif NAMES_RE.fullmatch(rest):
                        eq.names = [n.strip("`") for n in rest.split(", ")]
                    else:
                        doc.problems.append(
                            f"{where}:{k + 1}: malformed line {lines[k]!r}; write "
                            f"'{IMPL_PREFIX} `numpyvae.module.function`, `numpyvae.module.Class.method`' "
                            f"or '{IMPL_PREFIX} {DEFINITION_ONLY}'")
                        eq.names = []
                doc.equations.append(eq)
            i = end + 1
            continue
        for tag in TAG_RE.findall(lines[i]):
            doc.problems.append(f"{where}:{i + 1}: \\tag{{{tag}}} outside a $$ ... $$ display block")
        i += 1
    for k, ln in enumerate(lines):
        if ln.startswith(IMPL_PREFIX) and k not in consumed:
            doc.problems.append(f"{where}:{k + 1}: '{IMPL_PREFIX}' line that does not directly follow "
                                "a labelled $$ block")
    for eq in doc.equations:
        if eq.names is None:
            doc.problems.append(
                f"{where}:{eq.block_end}: \\tag{{{eq.label}}} has no '{IMPL_PREFIX}' line; add one directly "
                f"after the $$ block that ends on line {eq.block_end}, listing the function(s) whose "
                f"source cites 'Eq. ({eq.label}), docs/{name}', or '{IMPL_PREFIX} {DEFINITION_ONLY}'")
    seen = {}
    for eq in doc.equations:
        if eq.label in seen:
            doc.problems.append(f"{where}:{eq.line}: \\tag{{{eq.label}}} is already used on line "
                                f"{seen[eq.label]}; labels must be unique")
        seen.setdefault(eq.label, eq.line)
    return doc


@lru_cache(maxsize=None)
def docs():
    """{file name: Doc} for every Markdown file in docs/."""
    return {p.name: parse_doc(p.read_text(encoding="utf-8"), p.name) for p in sorted(DOCS.glob("*.md"))}


def equations_by_key():
    """{(label, doc): Equation} (the first one, if a label is duplicated)."""
    out = {}
    for d in docs().values():
        for eq in d.equations:
            out.setdefault((eq.label, d.name), eq)
    return out


# --------------------------------------------------------------------------- code

def python_files():
    """The files whose citations must resolve. This file is left out: its citations are
    deliberately broken fixtures for the tests at the bottom."""
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    files += sorted((ROOT / "tests").glob("*.py"))
    files += sorted((ROOT / "tutorials").rglob("*.py")) if (ROOT / "tutorials").is_dir() else []
    return [f for f in files if f.resolve() != Path(__file__).resolve()]


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def citations_in(text):
    """[(line, label, doc)] for every full citation in a text."""
    return [(line_of(text, m.start()), m.group(1), m.group(2)) for m in CITE_RE.finditer(text)]


def addressable_defs(tree):
    """[(qualname, first line, last line)] of every function, class and method reachable by
    getattr from its module: module-level defs and (recursively) defs in class bodies. Defs
    nested inside a function are part of that function."""
    out = []

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                qual = prefix + node.name
                out.append((qual, first, node.end_lineno))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, qual + ".")

    visit(tree.body, "")
    return out


def attribute_citations(text, modname):
    """{dotted name: {(label, doc)}} for a module's source: each citation goes to the innermost
    addressable def whose lines contain it. Citations outside every def are returned under None."""
    defs = addressable_defs(ast.parse(text))
    out = {}
    for line, label, doc in citations_in(text):
        around = [d for d in defs if d[1] <= line <= d[2]]
        owner = None
        if around:
            qual = min(around, key=lambda d: d[2] - d[1])[0]
            owner = f"{modname}.{qual}"
        out.setdefault(owner, set()).add((label, doc))
    return out


def resolve(name):
    """Import the longest module prefix of a dotted name, then getattr through the rest."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        modname = ".".join(parts[:i])
        try:
            obj = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name is not None and modname.startswith(exc.name):
                continue
            raise
        for k, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                raise LookupError(f"{'.'.join(parts[:k])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no importable module at the start of {name!r}")


def canonical_name(obj):
    obj = inspect.unwrap(obj)
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qual}" if module and qual else None


# --------------------------------------------------------------------------- checks

def check_citations(files_and_texts, eqs):
    """Rule 1: each full citation names an existing tag of the cited document."""
    problems = []
    by_doc = {}
    for label, doc in eqs:
        by_doc.setdefault(doc, set()).add(label)
    for path, text in files_and_texts:
        for line, label, doc in citations_in(text):
            if doc not in by_doc and not (DOCS / doc).exists():
                problems.append(f"{path}:{line} cites Eq. ({label}), docs/{doc}, but docs/{doc} does not "
                                f"exist; create it with a $$ block containing \\tag{{{label}}}")
            elif label not in by_doc.get(doc, set()):
                elsewhere = sorted(d for d, labels in by_doc.items() if label in labels)
                hint = f" (\\tag{{{label}}} is in docs/{', docs/'.join(elsewhere)}: fix the citation)" if elsewhere else ""
                problems.append(f"{path}:{line} cites Eq. ({label}), docs/{doc}: add a $$ block with "
                                f"\\tag{{{label}}} to docs/{doc}{hint}")
    return problems


def check_short_citations(files_and_texts, eqs):
    problems = []
    for path, text in files_and_texts:
        for m in SHORT_CITE_RE.finditer(text):
            label = m.group(1)
            homes = sorted(doc for lab, doc in eqs if lab == label)
            if len(homes) != 1:
                problems.append(f"{path}:{line_of(text, m.start())} cites Eq. ({label}) without a document, "
                                f"and \\tag{{{label}}} is in {len(homes)} documents {homes}; it must be in exactly one")
    return problems


def check_format(parsed):
    """Rule 4 (and the labels' letters) over {name: Doc}."""
    problems = [p for d in parsed.values() for p in d.problems]
    first = {}
    for d in parsed.values():
        for eq in d.equations:
            if eq.label in first and first[eq.label][0] != d.name:
                problems.append(f"docs/{d.name}:{eq.line}: \\tag{{{eq.label}}} is also used in "
                                f"docs/{first[eq.label][0]}:{first[eq.label][1]}; labels must be unique across docs/")
            first.setdefault(eq.label, (d.name, eq.line))
            letters = EXPECTED_DOCS.get(d.name)
            if letters is not None and eq.label[0] not in letters:
                problems.append(f"docs/{d.name}:{eq.line}: \\tag{{{eq.label}}} does not start with a letter "
                                f"this document owns ({', '.join(letters) or 'none'})")
    return problems


def check_names_resolve(eqs):
    """Rule 2."""
    problems = []
    for (label, doc), eq in eqs.items():
        for name in eq.names or []:
            where = f"docs/{doc}:{eq.impl_line} (\\tag{{{label}}})"
            if not name.startswith(PACKAGE + "."):
                problems.append(f"{where}: {name!r} is not inside the {PACKAGE} package")
                continue
            try:
                obj = resolve(name)
            except (LookupError, ImportError) as exc:
                problems.append(f"{where}: {name!r} does not resolve: {exc}")
                continue
            canon = canonical_name(obj)
            if canon is None:
                problems.append(f"{where}: {name!r} is not a function, method or class")
            elif canon != name:
                problems.append(f"{where}: write {canon!r} (where it is defined) instead of {name!r}")
    return problems


def check_implementers_cite(eqs):
    """Rule 3, forward: the source of each listed object cites the equation."""
    problems = []
    for (label, doc), eq in eqs.items():
        for name in eq.names or []:
            try:
                obj = resolve(name)
                src = inspect.getsource(obj)
            except (LookupError, ImportError, OSError, TypeError):
                continue  # reported by check_names_resolve
            if (label, doc) not in {(lab, d) for _, lab, d in citations_in(src)}:
                try:
                    path = Path(inspect.getsourcefile(obj)).relative_to(ROOT)
                    line = inspect.getsourcelines(obj)[1]
                    at = f"{path}:{line}"
                except (TypeError, OSError, ValueError):
                    at = name
                problems.append(
                    f"docs/{doc}:{eq.impl_line} lists {name} under \\tag{{{label}}}, but its source "
                    f"({at}) does not cite it: add 'Eq. ({label}), docs/{doc}' to the docstring of "
                    f"{name}, or remove {name} from that '{IMPL_PREFIX}' line")
    return problems


def check_citers_listed(attributions, eqs):
    """Rule 3, converse: attributions is {dotted name or None: {(label, doc)}}."""
    problems = []
    for owner, cited in attributions.items():
        if owner is None:
            continue
        for label, doc in sorted(cited):
            eq = eqs.get((label, doc))
            if eq is None:
                continue  # reported by check_citations
            if owner not in (eq.names or []):
                problems.append(
                    f"{owner} cites Eq. ({label}), docs/{doc}: add `{owner}` to the '{IMPL_PREFIX}' line "
                    f"of \\tag{{{label}}} in docs/{doc} (line {eq.impl_line or eq.block_end + 1})")
    return problems


def parse_readme_table(text):
    """{label: (doc link target, [names])} from the rows of docs/README.md whose first cell is a label."""
    rows, problems = {}, []
    for k, ln in enumerate(text.splitlines(), start=1):
        if not ln.lstrip().startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip().strip("|"))]
        if not cells or not re.fullmatch(LABEL, cells[0]):
            continue
        link = re.search(r"\]\(([^)#]+\.md)", cells[1]) if len(cells) > 1 else None
        last = cells[-1]
        if last == DEFINITION_ONLY:
            names = []
        elif NAMES_RE.fullmatch(last):
            names = [n.strip("`") for n in last.split(", ")]
        else:
            problems.append(f"docs/README.md:{k}: last cell of the row for {cells[0]} must be "
                            f"`numpyvae....` names separated by ', ' or {DEFINITION_ONLY}")
            names = []
        if cells[0] in rows:
            problems.append(f"docs/README.md:{k}: {cells[0]} has two rows")
        rows[cells[0]] = (link.group(1) if link else None, names)
    return rows, problems


def check_readme_table(text, eqs):
    rows, problems = parse_readme_table(text)
    labels = {}
    for (label, doc), eq in eqs.items():
        labels.setdefault(label, (doc, eq))
    for label, (doc, eq) in sorted(labels.items()):
        if label not in rows:
            names = ", ".join(f"`{n}`" for n in eq.names or []) or DEFINITION_ONLY
            problems.append(f"docs/README.md: add the row | {label} | [{doc}]({doc}) | ... | {names} |")
            continue
        link, names = rows[label]
        if link != doc:
            problems.append(f"docs/README.md: the row of {label} must link to {doc} (it links to {link})")
        if eq.names is None:
            continue  # the missing Implemented-by line is reported by the format test
        if sorted(names) != sorted(eq.names or []):
            want = ", ".join(f"`{n}`" for n in eq.names or []) or DEFINITION_ONLY
            problems.append(f"docs/README.md: the row of {label} must end with | {want} | "
                            f"(as under \\tag{{{label}}} in docs/{doc})")
    for label in sorted(set(rows) - set(labels)):
        problems.append(f"docs/README.md: the row of {label} names a label no document defines; remove it")
    return problems


# --------------------------------------------------------------------------- the tests

def _texts():
    return [(p.relative_to(ROOT), p.read_text(encoding="utf-8")) for p in python_files()]


def _fail(problems):
    if problems:
        pytest.fail(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems), pytrace=False)


def test_every_document_exists():
    missing = [f"docs/{n}" for n in EXPECTED_DOCS if not (DOCS / n).is_file()]
    _fail([f"create {m}" for m in missing])


def test_labels_well_formed_unique_and_implemented():
    parsed = docs()
    assert any(d.equations for d in parsed.values()), "no labelled equation found in docs/*.md"
    _fail(check_format(parsed))


def test_code_citations_name_existing_tags():
    texts = _texts()
    assert any(citations_in(t) for _, t in texts), "no 'Eq. (X#), docs/file.md' citation found in the code"
    _fail(check_citations(texts, equations_by_key()))


def test_short_citations_are_unambiguous():
    _fail(check_short_citations(_texts(), equations_by_key()))


def test_implemented_by_names_resolve():
    _fail(check_names_resolve(equations_by_key()))


def test_implementers_cite_their_equation():
    _fail(check_implementers_cite(equations_by_key()))


def test_citing_functions_are_listed_as_implementers():
    attributions = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        for owner, cited in attribute_citations(path.read_text(encoding="utf-8"), module_name(path)).items():
            attributions.setdefault(owner, set()).update(cited)
    assert len(attributions) > 1, "no citation inside a function of the package"
    _fail(check_citers_listed(attributions, equations_by_key()))


def test_readme_table_lists_every_equation():
    assert (DOCS / "README.md").is_file(), "create docs/README.md with the table of every equation label"
    _fail(check_readme_table((DOCS / "README.md").read_text(encoding="utf-8"), equations_by_key()))


def test_relative_links_in_docs_resolve():
    problems = []
    for p in sorted(DOCS.glob("*.md")):
        for k, ln in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            for target in LINK_RE.findall(ln):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue
                if not (p.parent / target.split("#")[0]).exists():
                    problems.append(f"docs/{p.name}:{k}: link target {target!r} does not exist")
    _fail(problems)


# --------------------------------------------------------------------------- the checkers can fail

BAD_DOC = r"""# A document with every mistake

$$
a = b \tag{A1}
$$

Implemented by: `numpyvae.layers.Linear`

$$
c = d \tag{A1}
$$

Implemented by: (definition only)

$$
e = f \tag{A2}
$$

Some text, then a tag outside a block: \tag{A3}

$$ g = h \tag{a4} $$

$$ i = j \tag{A5} $$
Implemented by: numpyvae.layers.Tanh

Implemented by: `numpyvae.layers.ReLU`
"""


def test_parser_flags_malformed_documents():
    d = parse_doc(BAD_DOC, "bad.md")
    text = "\n".join(d.problems)
    assert [e.label for e in d.equations] == ["A1", "A1", "A2", "A5"]
    assert d.equations[0].names == ["numpyvae.layers.Linear"] and d.equations[1].names == []
    assert "already used on line 4" in text                      # duplicate label
    assert "\\tag{A2} has no 'Implemented by:' line" in text      # missing line
    assert "\\tag{A3} outside a $$" in text                      # tag in prose
    assert "\\tag{a4} is not a label" in text                     # bad label
    assert "does not directly follow" in text                      # orphan line
    assert "malformed line 'Implemented by: numpyvae.layers.Tanh'" in text  # names without backticks
    assert parse_doc("$$\nx \\tag{Q1}\n", "open.md").problems[0].endswith("never closed")


def test_citation_checks_fail_on_wrong_citations():
    eqs = {("K2", "kl.md"): Equation("K2", "kl.md", 3, 4, ["numpyvae.layers.Linear"], 6),
           ("K3", "kl.md"): Equation("K3", "kl.md", 9, 10, [], 12)}
    texts = [("x.py", "# Eq. (K9), docs/kl.md\n# Eq. (K2), docs/nowhere.md\n# Eq. (K3), docs/kl.md\n"),
             ("y.py", "see Eq. (K2) and Eq. (Z7)")]
    problems = check_citations(texts, eqs)
    assert len(problems) == 2 and "add a $$ block with \\tag{K9} to docs/kl.md" in problems[0]
    assert "docs/nowhere.md does not exist" in problems[1]
    short = check_short_citations(texts, eqs)
    assert len(short) == 1 and "Eq. (Z7)" in short[0]
    # numpyvae.layers.Linear cites B1/B2, not K2; listing it under K2 must be reported.
    assert "does not cite it" in check_implementers_cite(eqs)[0]
    bad_names = {("K2", "kl.md"): Equation("K2", "kl.md", 3, 4, ["numpyvae.VAE", "numpyvae.layers.Nope"], 6)}
    msgs = check_names_resolve(bad_names)
    assert "write 'numpyvae.model.VAE'" in msgs[0] and "does not resolve" in msgs[1]


def test_attribution_goes_to_innermost_function():
    src = '''"""Module overview, Eq. (E1), docs/elbo.md."""

class A:
    """Class docstring, Eq. (B1), docs/backprop.md."""

    def f(self):
        """Eq. (B2), docs/backprop.md"""
        def helper():
            return 1  # Eq. (B3), docs/backprop.md
        return helper()

    @staticmethod
    def g():
        pass


def h():
    x = 1  # Eq. (K2), docs/kl.md
    return x
'''
    got = attribute_citations(src, "m")
    assert got == {None: {("E1", "elbo.md")}, "m.A": {("B1", "backprop.md")},
                   "m.A.f": {("B2", "backprop.md"), ("B3", "backprop.md")}, "m.h": {("K2", "kl.md")}}
    eqs = {("K2", "kl.md"): Equation("K2", "kl.md", 3, 4, [], 6)}
    msg = check_citers_listed(got, eqs)
    assert msg == ["m.h cites Eq. (K2), docs/kl.md: add `m.h` to the 'Implemented by:' line of "
                   "\\tag{K2} in docs/kl.md (line 6)"]


def test_readme_check_fails_on_missing_or_wrong_rows():
    eqs = {("K2", "kl.md"): Equation("K2", "kl.md", 3, 4, ["numpyvae.a.b"], 6),
           ("K3", "kl.md"): Equation("K3", "kl.md", 9, 10, [], 12)}
    table = ("| label | doc | what | implemented by |\n|---|---|---|---|\n"
             "| K2 | [elbo.md](elbo.md) | KL | `numpyvae.a.c` |\n| K9 | [kl.md](kl.md) | x | (definition only) |\n")
    problems = check_readme_table(table, eqs)
    assert any("add the row | K3 |" in p for p in problems)
    assert any("row of K2 must link to kl.md" in p for p in problems)
    assert any("row of K2 must end with | `numpyvae.a.b` |" in p for p in problems)
    assert any("K9 names a label no document defines" in p for p in problems)
