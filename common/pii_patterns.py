"""The shapes of personal data: one compiled pattern per kind and form, and the tables
they use (delimiters, area codes, keyword gaps, the cluster pre-filter).

Patterns only say where a number or an address could be; `common.pii_checks` says whether
its digits are valid, and `common.pii_candidates` decides which patterns run where. The
rules these encode are documented in `common.pii`.
"""

from __future__ import annotations

import re

# Delimiters.
# Not preceded by a letter/digit/underscore, nor by a digit followed by . / -
# (which would make the match the tail of a longer number).
_L = r"(?<!\w)(?<![0-9][./-])"
# Not followed by a letter/digit/underscore, nor by . / - and a digit (the head of a
# longer number); a trailing full stop or hyphen before a space is fine.
_R = r"(?!\w)(?![./-][0-9])"
# The kinds with check digits (cpf, cnpj, cards, rg) may be glued to letters
# ("CPF529.982.247-25"): only digits delimit them. Phones and CEPs, which have no check
# digit, keep the stricter delimiters above.
_LD = r"(?<![0-9])(?<![0-9][./-])"
_RD = r"(?![0-9])(?![./-][0-9])"

# ANATEL area codes (DDD): 11-19, 21, 22, 24, 27, 28, 31-35, 37, 38, 41-49, 51, 53-55,
# 61-69, 71, 73-75, 77, 79, 81-89, 91-99.
_DDD = r"(?:1[1-9]|2[12478]|3[1-578]|4[1-9]|5[1345]|6[1-9]|7[134579]|8[1-9]|9[1-9])"

CPF_RE = re.compile(_LD + r"[0-9]{3}(\.?)[0-9]{3}\1[0-9]{3}-?[0-9]{2}" + _RD)
CNPJ_RE = re.compile(_LD + r"[0-9]{2}(\.?)[0-9]{3}\1[0-9]{3}/?[0-9]{4}-?[0-9]{2}" + _RD)
# The alphanumeric CNPJ, punctuated only; tried 10 characters before each "/".
CNPJ_ALNUM_RE = re.compile(_L + r"[0-9A-Z]{2}\.[0-9A-Z]{3}\.[0-9A-Z]{3}/[0-9A-Z]{4}-[0-9]{2}" + _R)
CNPJ_ALNUM_SLASH = 10
RG_FORMATTED_RE = re.compile(_LD + r"[0-9]{2}\.[0-9]{3}\.[0-9]{3}-[0-9Xx]" + _R)
RG_BARE_RE = re.compile(_LD + r"[0-9]{8}-?[0-9Xx]" + _R)
RG_KEYWORD_RE = re.compile(r"(?<![A-Za-z])RG(?![A-Za-z])", re.IGNORECASE)
RG_KEYWORD_GAP = 15  # a bare RG may start at most this many characters after "RG"
# [+55] then the DDD, bare or in parentheses, with an optional trunk 0; then a mobile
# (9 + 8 digits, "9 1234-5678" too) or a landline (2-5 + 7 digits). A "55" without "+"
# must be followed by a separator or by a bare run of 10-11 digits, so that card-like
# groups such as "5555 5555 5555" do not read as +55 55 5555-5555.
PHONE_RE = re.compile(
    rf"(?<![\w+])(?<![0-9][./-])(?:\+55[ -]?|55[ -]|55(?=[0-9]{{10,11}}(?![0-9])))?"
    rf"(?:\(0?{_DDD}\)|0?{_DDD})"
    rf"[ -]?(?:9[ -]?[0-9]{{4}}|[2-5][0-9]{{3}})[ -]?[0-9]{{4}}{_R}"
)
# E-mail: the domain is matched forwards from each "@", the local part backwards (on the
# reversed text), so each character is examined a bounded number of times.
# RFC 5321 limits: a local part of 64 characters, a domain label of 63.
EMAIL_LOCAL_MAX = 64
EMAIL_LABEL_MAX = 63
EMAIL_LOCAL_REVERSED_RE = re.compile(rf"[A-Za-z0-9._%+-]{{1,{EMAIL_LOCAL_MAX}}}")
EMAIL_DOMAIN_RE = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])")
# Cards: 13-19 bare digits, or 4-4-4-4 (plus an optional 1-3 digit group: 17-19 digit
# cards, or a CVV), or 4-6-5 / 4-6-4, with one consistent separator.
CARD_RE = re.compile(
    _LD
    + r"(?:[0-9]{13,19}"
    + r"|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?P<tail>\1[0-9]{1,3})?"
    + r"|[0-9]{4}([ -])[0-9]{6}\3[0-9]{4,5})"
    + _RD
)
CEP_FORMATTED_RE = re.compile(_L + r"[0-9]{2}\.?[0-9]{3}-[0-9]{3}" + _R)
CEP_BARE_RE = re.compile(_LD + r"[0-9]{8}" + _R)
CEP_KEYWORD_RE = re.compile(r"(?<![A-Za-z])CEP(?![A-Za-z])", re.IGNORECASE)
CEP_KEYWORD_GAP = 10  # a bare CEP may start at most this many characters after "CEP"
# How far past the gap a bare-number search must see: 10 characters and _R's two.
BARE_TAIL = 13

# Every numeric finding holds 8+ digits separated by at most three punctuation
# characters (its first digit may follow "+", "(" or a letter). The first pass finds
# such clusters in a "shape" of the text: one byte per character, every digit (and an
# RG's check letter X) turned into b"0", every non-ASCII character into b"?". Starting
# with a literal lets the engine skip ahead with a plain byte search; gaps are bounded
# and quantifiers possessive, so an attempt costs O(1) whatever the input. A cluster is
# kept only if it has 8+ digits and either 11+ digits (cpf, cnpj, card, phone) or the
# shape of a phone ending (0000-0000), a CEP (000-000) or an RG (000.000-0) within its
# first eleven digits: dates, amounts and timestamps are dropped here, in C. Byte tests
# on each kept cluster then pick the per-kind patterns, which run on the text itself,
# only inside the cluster. Bare RGs and CEPs are found from their keywords instead.
SHAPE = bytes.maketrans(b"0123456789Xx", b"000000000000")
CLUSTER_RE = re.compile(
    rb"0"
    rb"(?=(?:[ ()./_+-]{0,3}+0){7})"
    rb"(?=(?:[ ()./_+-]{0,3}+0){10}"
    rb"|(?:[ ()./_+-]{0,3}+0){0,9}?[ ()./_+-]{0,3}+(?:0000[ -]?0000|000-000|000\.000-0))"
    rb"(?:[ ()./_+-]{0,3}+0){7,}+"
)
CLUSTER_MARGIN = 2  # _R looks two characters past a match
CHECK_EVERY = 512  # clusters between two calls of a scan's `check` (its budget)
EIGHT_DIGITS = b"00000000"
