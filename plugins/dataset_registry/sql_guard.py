"""Refuse, before it runs, any SQL that is not exactly one read-only query.

Plain Python (no Airflow, no MySQLdb) so it can be used and tested anywhere. The rendered SQL is
tokenized the way MySQL/MariaDB read it: '...' and "..." strings (backslash escapes unless the
session's sql_mode has NO_BACKSLASH_ESCAPES; a doubled quote is a quote), `...` identifiers ("..." too
under ANSI_QUOTES), ``--`` comments (only when followed by whitespace/control/end, as the server
does), ``#`` comments and ``/* */`` comments. Then these rules apply; each refusal names its rule
and what to do:

- ``one statement``: a ``;`` may only end the query (whitespace and comments may follow it).
- ``read-only statement``: the first keyword is ``SELECT``, ``WITH`` (whose main statement is one of
  these), ``VALUES``, ``TABLE`` or ``(`` (a parenthesised query). Everything else (INSERT, UPDATE,
  DELETE, DDL, SET, CALL, SHOW, HANDLER, DO, ...) is refused.
- ``no INTO``: ``INTO OUTFILE`` / ``INTO DUMPFILE`` write a file on the database server;
  ``INTO @var`` returns no rows. Both are refused.
- ``no locking read``: ``FOR UPDATE``, ``FOR SHARE``, ``LOCK IN SHARE MODE`` lock source rows.
- ``no executable comment``: ``/*! ... */`` and ``/*M! ... */`` are SQL the server runs, hidden in
  a comment; refused rather than parsed.
- ``complete query``: an unterminated string, identifier or comment is refused.
- ``no control characters``: C0 controls other than tab, CR and LF, and DEL (0x7F), are refused
  outright: the server's idea of where a ``--`` comment starts depends on them (``--\x7f`` is a
  comment to MariaDB), so no tokenizer of ours should have to agree with it on such bytes.

The guard is one layer of three: the export also turns multi-statements off on the connection and
runs in a read-only session. It is not a SQL parser and does not try to judge functions (SLEEP,
GET_LOCK, LOAD_FILE, ...): grant the export account SELECT only (no FILE privilege).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_MAIN_AFTER_WITH = {"SELECT", "VALUES", "TABLE"}
_STATEMENT_WORDS = _MAIN_AFTER_WITH | {"WITH"}
_WORD_CHAR = re.compile(r"[0-9A-Za-z_$\u0080-\U0010ffff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DIGIT_LETTER = re.compile(r"(?<=[0-9])(?=[A-Za-z_$\u0080-\U0010ffff])")


class QueryRefused(ValueError):
    """The SQL breaks one of the guard's rules; ``rule`` is the rule's short name."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"query refused ({rule}): {message}")
        self.rule = rule


@dataclass(frozen=True)
class Token:
    kind: str  # word | ident | string | var | punct
    text: str
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


def _where(sql: str, pos: int) -> str:
    line = sql.count("\n", 0, pos) + 1
    col = pos - (sql.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


def _snippet(sql: str, pos: int, width: int = 40) -> str:
    text = " ".join(sql[pos:pos + width].split())
    return repr(text + ("..." if len(sql) - pos > width else ""))


def modes_from_sql_mode(sql_mode: str | None) -> dict:
    """Tokenizer settings for a session ``@@sql_mode`` value (``ANSI`` and ``ORACLE`` imply ANSI_QUOTES)."""
    flags = {f.strip().upper() for f in (sql_mode or "").split(",")}
    return {
        "backslash_escapes": "NO_BACKSLASH_ESCAPES" not in flags,
        "ansi_quotes": bool(flags & {"ANSI_QUOTES", "ANSI", "ORACLE"}),
    }


def tokenize(sql: str, *, backslash_escapes: bool = True, ansi_quotes: bool = False) -> list[Token]:
    """Code tokens of ``sql``; comments dropped, strings kept as single tokens. Raises QueryRefused."""
    tokens: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif c == "#" or (sql.startswith("--", i) and (i + 2 >= n or ord(sql[i + 2]) <= 32)):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            if sql.startswith("!", i + 2) or sql.startswith("M!", i + 2):
                raise QueryRefused(
                    "no executable comment",
                    f"{sql[i:i + 4]!r}... at {_where(sql, i)} is an executable comment: the server runs "
                    "its content as SQL. Write that SQL without the /*! */ wrapper.",
                )
            end = sql.find("*/", i + 2)
            if end < 0:
                raise QueryRefused("complete query", f"the comment opened at {_where(sql, i)} is never closed (*/).")
            i = end + 2
        elif c == "`" or (c == '"' and ansi_quotes):
            start = i
            i = _skip_quoted(sql, i, c, escapes=False, what="identifier")
            tokens.append(Token("ident", sql[start:i], start))
        elif c in "'\"":
            start = i
            i = _skip_quoted(sql, i, c, escapes=backslash_escapes, what="string")
            tokens.append(Token("string", sql[start:i], start))
        elif c == "@":
            start = i
            i += 2 if sql.startswith("@@", i) else 1
            while i < n and (_WORD_CHAR.match(sql[i]) or sql[i] == "."):
                i += 1
            tokens.append(Token("var", sql[start:i], start))
        elif _WORD_CHAR.match(c):
            start = i
            while i < n and _WORD_CHAR.match(sql[i]):
                i += 1
            word = sql[start:i]
            if word[0].isdigit():
                # "1e0INTO" and "1.0INTO" are a number then INTO for the server: split where a digit
                # meets a letter, so no keyword hides behind a number.
                offset = start
                for piece in _DIGIT_LETTER.split(word):
                    tokens.append(Token("word", piece, offset))
                    offset += len(piece)
            else:
                tokens.append(Token("word", word, start))
        else:
            tokens.append(Token("punct", c, i))
            i += 1
    return tokens


def _skip_quoted(sql: str, i: int, quote: str, *, escapes: bool, what: str) -> int:
    """Index just past the quoted run that starts at ``i``."""
    start, n = i, len(sql)
    i += 1
    while i < n:
        c = sql[i]
        if escapes and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:  # doubled quote
                i += 2
                continue
            return i + 1
        i += 1
    raise QueryRefused("complete query", f"the {what} opened with {quote} at {_where(sql, start)} is never closed.")


def _skip_group(tokens: list[Token], j: int) -> int:
    """``tokens[j]`` is '('; index just past its matching ')'."""
    depth = 0
    for k in range(j, len(tokens)):
        if tokens[k].kind == "punct":
            if tokens[k].text == "(":
                depth += 1
            elif tokens[k].text == ")":
                depth -= 1
                if depth == 0:
                    return k + 1
    return len(tokens)


def _is(tokens: list[Token], j: int, *words: str) -> bool:
    return j < len(tokens) and tokens[j].upper in words


def _is_punct(tokens: list[Token], j: int, text: str) -> bool:
    return j < len(tokens) and tokens[j].kind == "punct" and tokens[j].text == text


def _main_after_with(tokens: list[Token], at: int) -> Token | None:
    """The statement a ``WITH [RECURSIVE] name [(cols)] AS (...) [CYCLE ... RESTRICT], ...`` introduces."""
    j = at + 2 if _is(tokens, at + 1, "RECURSIVE") else at + 1
    while True:
        if j >= len(tokens) or tokens[j].kind not in ("word", "ident"):
            return None
        j += 1
        if _is_punct(tokens, j, "("):
            j = _skip_group(tokens, j)
        if not _is(tokens, j, "AS") or not _is_punct(tokens, j + 1, "("):
            return None
        j = _skip_group(tokens, j + 1)
        if _is(tokens, j, "CYCLE"):  # MariaDB: CYCLE col, ... RESTRICT
            while j < len(tokens) and not _is(tokens, j, "RESTRICT"):
                j += 1
            j += 1
        if _is_punct(tokens, j, ","):
            j += 1
            continue
        return tokens[j] if j < len(tokens) else None


def check_query(sql: str, *, backslash_escapes: bool = True, ansi_quotes: bool = False) -> None:
    """Raise QueryRefused unless ``sql`` is one read-only query (see the module docstring)."""
    if not isinstance(sql, str):
        raise QueryRefused("one statement", f"the query must be text, got {type(sql).__name__}.")
    control = _CONTROL.search(sql)
    if control:
        raise QueryRefused(
            "no control characters",
            f"control character {control.group()!r} at {_where(sql, control.start())}: remove it (only tab, CR "
            "and LF may appear in a query; write other bytes as CHAR(n) or X'..' literals).",
        )
    tokens = tokenize(sql, backslash_escapes=backslash_escapes, ansi_quotes=ansi_quotes)
    for idx, tok in enumerate(tokens):
        if tok.kind == "punct" and tok.text == ";":
            if idx != len(tokens) - 1:
                after = tokens[idx + 1].pos
                raise QueryRefused(
                    "one statement",
                    f"more than one statement: the ';' at {_where(sql, tok.pos)} is followed by "
                    f"{_snippet(sql, after)}. Write exactly one SELECT; a ';' may only end the query.",
                )
            tokens = tokens[:idx]
            break
    if not tokens:
        raise QueryRefused("read-only statement", "the query is empty: write one SELECT statement.")

    j = 0
    while _is_punct(tokens, j, "("):  # a parenthesised query: judge the statement inside
        j += 1
    first = tokens[min(j, len(tokens) - 1)]
    if first.upper not in _STATEMENT_WORDS:
        raise QueryRefused(
            "read-only statement",
            f"the query starts with {_snippet(sql, first.pos, 20)}; it must start with SELECT, WITH, "
            "VALUES, TABLE or '(' (a parenthesised SELECT). Data changes, DDL, SET, CALL, SHOW and the "
            "like are never run by the export.",
        )
    if first.upper == "WITH":
        main = _main_after_with(tokens, j)
        if main is None or not (main.upper in _MAIN_AFTER_WITH or (main.kind == "punct" and main.text == "(")):
            shown = _snippet(sql, main.pos, 20) if main is not None else "nothing"
            raise QueryRefused(
                "read-only statement",
                f"the WITH clause introduces {shown}; after the common table expressions the query "
                "must continue with SELECT, VALUES, TABLE or '('.",
            )

    for idx, tok in enumerate(tokens):
        word = tok.upper
        if word == "INTO":
            target = tokens[idx + 1].upper if idx + 1 < len(tokens) else ""
            if target in ("OUTFILE", "DUMPFILE"):
                raise QueryRefused(
                    "no INTO",
                    f"INTO {target} at {_where(sql, tok.pos)} would write a file on the database server. "
                    "Remove the INTO clause: the export writes the CSV itself.",
                )
            raise QueryRefused(
                "no INTO",
                f"INTO at {_where(sql, tok.pos)} stores the result in variables instead of returning rows. "
                "Remove the INTO clause.",
            )
        if (word == "FOR" and _is(tokens, idx + 1, "UPDATE", "SHARE")) or (
            word == "LOCK" and _is(tokens, idx + 1, "IN") and _is(tokens, idx + 2, "SHARE")
        ):
            clause = "FOR " + tokens[idx + 1].text.upper() if word == "FOR" else "LOCK IN SHARE MODE"
            raise QueryRefused(
                "no locking read",
                f"{clause} at {_where(sql, tok.pos)} locks rows on the source database and blocks its "
                "writers. Remove it: the export already reads one consistent snapshot.",
            )
