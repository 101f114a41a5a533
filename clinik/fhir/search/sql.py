"""Compile a SearchQuery to parameterized SQL over the store and index tables, and
run it (PostgreSQL store).

Values are always parameters, never SQL text; identifiers in the SQL (tables,
columns) come from constants. Only leakproof btree operators touch indexed values
(`=`, `<`, `>=` on COLLATE "C" text, float8 and timestamptz), so PostgreSQL can use
the indexes under row-level security. A string prefix is a range
(`value >= p AND value < p || U+10FFFF`), never LIKE. `:contains` is `strpos`, which
is not leakproof: PostgreSQL evaluates it after the policy, over the index range of
(org_id, resource_type, param); correct, but linear in that parameter's rows.

Every statement names the tenant (`org_id = %s`, the tag wall) unless the store was
built with tag_wall=False, in which case row-level security alone restricts it.

Plans must not depend on the statistics: a tenant created or loaded since the last
ANALYZE is estimated at one row, and any join order then looks as good as another. A
single-type search is driven from one criterion's ids (a set computed once), every
other criterion and sort key is a probe by id per candidate (`EXISTS (... OFFSET 0)`),
and fhir_resource is read by primary key; see _Statement._from_index.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connection

from clinik.fhir.search.extract import TEXT_SUFFIX
from clinik.fhir.search.query import (
    Chain,
    Clause,
    Compartment,
    CompositeValue,
    Cursor,
    DateValue,
    Has,
    Include,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SearchQuery,
    StringValue,
    TokenValue,
    UriValue,
)
from clinik.fhir.search.registry import SearchParam
from clinik.fhir.search.registry import get as get_param
from clinik.fhir.search.values import MAX_CHAR, clip, normalize, prefix_bounds
from clinik.fhir.store.base import SearchResult, Version
from clinik.fhir.tenancy import TENANT_SYSTEM

TABLE = {
    "string": "fhir_idx_string",
    "token": "fhir_idx_token",
    "date": "fhir_idx_date",
    "number": "fhir_idx_number",
    "quantity": "fhir_idx_quantity",
    "reference": "fhir_idx_reference",
    "uri": "fhir_idx_uri",
    "composite": "fhir_idx_composite",
}
MAX_INCLUDED = 1000
"""Resources added by _include/_revinclude to one page, at most."""
MAX_ITERATIONS = 3
"""Rounds of _include:iterate / _revinclude:iterate after the first."""
COLUMNS = "r.resource_type, r.id, r.version_id, r.last_updated, r.content"

Sql = tuple[str, list[Any]]


def _join(parts: Sequence[Sql], separator: str) -> Sql:
    return separator.join(p[0] for p in parts), [a for p in parts for a in p[1]]


# --- value predicates ---------------------------------------------------------------------


def _string(value: StringValue, modifier: str | None, alias: str, column: str = "value") -> Sql:
    text = normalize(value.text)
    if modifier == "exact":
        return f"({alias}.{column} = %s AND {alias}.exact = %s)", [text, clip(value.text)]
    if modifier == "contains":
        return f"strpos({alias}.{column}, %s) > 0", [text]
    low, high = prefix_bounds(text)
    return f"({alias}.{column} >= %s AND {alias}.{column} < %s)", [low, high]


def _token(value: TokenValue, alias: str, system: str = "system", code: str = "code") -> Sql:
    parts: list[Sql] = []
    if value.code is not None:
        parts.append((f"{alias}.{code} = %s", [value.code]))
    if value.system is not None:
        parts.append((f"{alias}.{system} = %s", [value.system]))
    return _join(parts, " AND ")


def _date_range(prefix: str, low: datetime, high: datetime, lo: str, hi: str) -> Sql:
    """FHIR date comparison of a stored range [lo, hi] with the search range [low, high]."""
    if prefix == "eq":
        return f"({lo} >= %s AND {lo} <= %s AND {hi} <= %s)", [low, high, high]
    if prefix == "ne":
        return f"({lo} < %s OR {hi} > %s)", [low, high]
    if prefix == "gt":
        return f"{hi} > %s", [high]
    if prefix == "lt":
        return f"{lo} < %s", [low]
    if prefix == "ge":
        return f"({hi} > %s OR ({lo} >= %s AND {hi} <= %s))", [high, low, high]
    if prefix == "le":
        return f"({lo} < %s OR ({lo} >= %s AND {hi} <= %s))", [low, low, high]
    if prefix == "sa":
        return f"{lo} > %s", [high]
    if prefix == "eb":
        return f"{hi} < %s", [low]
    # ap: overlaps the search range widened by a tenth of its distance from now.
    now = datetime.now(UTC)
    slack = max(abs(now - low) / 10, high - low, timedelta(days=1))
    return f"({lo} <= %s AND {hi} >= %s)", [high + slack, low - slack]


def _number_range(prefix: str, value: float, low: float, high: float, lo: str, hi: str) -> Sql:
    """FHIR number comparison: eq/ne use the implicit precision range [low, high)."""
    if prefix == "eq":
        return f"({lo} >= %s AND {hi} < %s)", [low, high]
    if prefix == "ne":
        return f"({lo} < %s OR {hi} >= %s)", [low, high]
    if prefix == "gt":
        return f"{hi} > %s", [value]
    if prefix == "lt":
        return f"{lo} < %s", [value]
    if prefix == "ge":
        return f"{hi} >= %s", [value]
    if prefix == "le":
        return f"{lo} <= %s", [value]
    if prefix == "sa":
        return f"{lo} > %s", [value]
    if prefix == "eb":
        return f"{hi} < %s", [value]
    margin = abs(value) / 10  # ap: within 10 %
    return f"({lo} <= %s AND {hi} >= %s)", [value + margin, value - margin]


def _quantity(value: QuantityValue, alias: str, suffix: str = "", units: bool = True) -> Sql:
    parts = [
        _number_range(
            value.prefix,
            value.value,
            value.low,
            value.high,
            f"{alias}.low{suffix}",
            f"{alias}.high{suffix}",
        )
    ]
    if value.system is not None:
        parts.append((f"{alias}.system{suffix} = %s", [value.system]))
    if value.code is not None:
        if value.system is None and units:
            parts.append((f"({alias}.code = %s OR {alias}.unit = %s)", [value.code, value.code]))
        else:
            parts.append((f"{alias}.code{suffix} = %s", [value.code]))
    return _join(parts, " AND ")


def _reference(value: ReferenceValue, alias: str, type_modifier: str | None) -> Sql:
    parts: list[Sql] = [(f"{alias}.target_id = %s", [value.id])]
    target_type = value.type or type_modifier
    if target_type and "/" not in value.id:
        parts.append((f"{alias}.target_type = %s", [target_type]))
    return _join(parts, " AND ")


def _uri(value: UriValue, modifier: str | None, alias: str) -> Sql:
    if modifier == "below":
        return f"({alias}.value >= %s AND {alias}.value < %s)", [value.uri, value.uri + MAX_CHAR]
    if modifier == "above":
        ancestors = [value.uri]
        parts = value.uri.split("/")
        ancestors += ["/".join(parts[:n]) for n in range(len(parts) - 1, 2, -1)]
        return f"{alias}.value = ANY(%s)", [ancestors]
    return f"{alias}.value = %s", [value.uri]


def _composite(value: CompositeValue, kinds: Sequence[str], alias: str) -> Sql:
    parts: list[Sql] = []
    for position, (kind, part) in enumerate(zip(kinds, value.parts, strict=True), start=1):
        if isinstance(part, TokenValue):
            parts.append(_token(part, alias, f"system{position}", f"code{position}"))
        elif isinstance(part, StringValue):
            low, high = prefix_bounds(normalize(part.text))
            column = f"{alias}.text{position}"
            parts.append((f"({column} >= %s AND {column} < %s)", [low, high]))
        elif isinstance(part, DateValue):
            parts.append(
                _date_range(
                    part.prefix,
                    part.low,
                    part.high,
                    f"{alias}.dlow{position}",
                    f"{alias}.dhigh{position}",
                )
            )
        elif isinstance(part, QuantityValue) and kind == "quantity":
            parts.append(_quantity(part, alias, str(position), units=False))
        elif isinstance(part, QuantityValue | NumberValue):
            parts.append(
                _number_range(
                    part.prefix,
                    part.value,
                    part.low,
                    part.high,
                    f"{alias}.low{position}",
                    f"{alias}.high{position}",
                )
            )
    return _join([p for p in parts if p[0]], " AND ")


def _params(alias: str, param: SearchParam, suffix: str = "") -> Sql:
    """The index rows of a parameter: its own code, or its parts' (SearchParam.stored),
    of the one target type a restricted reference parameter allows."""
    codes = [code + suffix for code in param.stored]
    sql, args = (
        (f"{alias}.param = %s", [codes[0]])
        if len(codes) == 1
        else (f"{alias}.param = ANY(%s)", [codes])
    )
    if param.restrict_to and not suffix:
        return f"{sql} AND {alias}.target_type = %s", [*args, param.restrict_to]
    return sql, args


# --- criteria -------------------------------------------------------------------------------


class Compiler:
    def __init__(self, tenant: UUID, tag_wall: bool) -> None:
        self.tenant = tenant
        self.tag_wall = tag_wall
        self.aliases = 0

    def alias(self, stem: str) -> str:
        self.aliases += 1
        return f"{stem}{self.aliases}"

    def org(self, alias: str) -> Sql:
        """The tag wall's share of a WHERE clause (nothing when it is switched off)."""
        return (f"{alias}.org_id = %s AND ", [self.tenant]) if self.tag_wall else ("", [])

    def types(self, alias: str, types: Sequence[str]) -> Sql:
        if len(types) == 1:
            return f"{alias}.resource_type = %s", [types[0]]
        return f"{alias}.resource_type = ANY(%s)", [list(types)]

    # A clause's values, OR-ed, as a predicate on one index row.
    def values(self, clause: Clause, alias: str) -> Sql:
        param, modifier = clause.param, clause.modifier
        if not clause.values:
            return "TRUE", []
        parts: list[Sql] = []
        for value in clause.values:
            if modifier == "text":
                parts.append(_string(value, None, alias))
            elif isinstance(value, StringValue):
                parts.append(_string(value, modifier, alias))
            elif isinstance(value, TokenValue):
                parts.append(_token(value, alias))
            elif isinstance(value, DateValue):
                parts.append(
                    _date_range(
                        value.prefix, value.low, value.high, f"{alias}.low", f"{alias}.high"
                    )
                )
            elif isinstance(value, QuantityValue):
                parts.append(_quantity(value, alias))
            elif isinstance(value, NumberValue):
                parts.append(
                    _number_range(
                        value.prefix,
                        value.value,
                        value.low,
                        value.high,
                        f"{alias}.low",
                        f"{alias}.high",
                    )
                )
            elif isinstance(value, ReferenceValue):
                type_modifier = modifier if modifier and modifier[0].isupper() else None
                parts.append(_reference(value, alias, type_modifier))
            elif isinstance(value, UriValue):
                parts.append(_uri(value, modifier, alias))
            elif isinstance(value, CompositeValue):
                kinds = [c.type for c in param.components]
                parts.append(_composite(value, kinds, alias))
        sql, args = _join(parts, " OR ")
        return f"({sql})", args

    @staticmethod
    def table_param(clause: Clause, alias: str) -> tuple[str, Sql]:
        """The index table of a clause's rows, and the predicate on their `param`."""
        if clause.modifier == "text":
            return TABLE["string"], _params(alias, clause.param, TEXT_SUFFIX)
        return TABLE[clause.param.type], _params(alias, clause.param)

    def tenant_tag(self, clause: Clause) -> tuple[Clause | None, bool]:
        """`_tag=<tenant system>|<org>`: every own resource carries that tag, which is
        not indexed. Returns the clause without such values, and whether one of them
        names this tenant (then every resource matches)."""
        if clause.param.code != "_tag" or not clause.values:
            return clause, False
        ours = [v for v in clause.values if isinstance(v, TokenValue) and v.system == TENANT_SYSTEM]
        if not ours:
            return clause, False
        hit = any(v.code in (None, str(self.tenant)) for v in ours)
        rest = tuple(v for v in clause.values if v not in ours)
        if not rest:
            return None, hit
        return Clause(clause.param, clause.modifier, rest, clause.missing), hit

    def rows(self, clause: Clause, alias: str, types: Sequence[str], *, pairs: bool) -> Sql:
        """SELECT of the (type and) ids whose index rows match the clause's values."""
        table, (param, param_args) = self.table_param(clause, alias)
        org, org_args = self.org(alias)
        type_sql, type_args = self.types(alias, types)
        values, value_args = self.values(clause, alias)
        columns = f"{alias}.resource_type, {alias}.id" if pairs else f"{alias}.id"
        return (
            f"SELECT {columns} FROM {table} {alias} WHERE {org}{type_sql} AND {param} AND {values}",
            [*org_args, *type_args, *param_args, *value_args],
        )

    def column_clause(self, clause: Clause, row: str) -> Sql:
        """_id and _lastUpdated: predicates on fhir_resource itself."""
        if clause.missing is not None:
            return ("FALSE" if clause.missing else "TRUE"), []
        if clause.param.column == "id":
            ids = [v.code for v in clause.values if isinstance(v, TokenValue) and v.code]
            sql: Sql = (f"{row}.id = ANY(%s)", [ids])
        else:
            column = f"{row}.last_updated"
            dates = [v for v in clause.values if isinstance(v, DateValue)]
            sql = _join(
                [_date_range(v.prefix, v.low, v.high, column, column) for v in dates], " OR "
            )
            sql = (f"({sql[0]})", sql[1])
        if clause.modifier == "not":
            return f"NOT {sql[0]}", sql[1]
        return sql

    def match(self, criterion: Any, row: str, types: Sequence[str]) -> Sql:
        """A predicate on the fhir_resource row `row` (of one of `types`)."""
        if isinstance(criterion, Clause):
            if criterion.param.column:
                return self.column_clause(criterion, row)
            clause, everything = self.tenant_tag(criterion)
            if everything or clause is None:
                hit = everything != criterion.negated
                return ("TRUE" if hit else "FALSE"), []
            if clause.negated:
                return self.absent(clause, row)
            if clause.missing is False:
                clause = Clause(clause.param, None, ())
            pairs = len(types) > 1
            sql, args = self.rows(clause, self.alias("x"), types, pairs=pairs)
            target = f"({row}.resource_type, {row}.id)" if pairs else f"{row}.id"
            return f"{target} IN ({sql})", args
        if isinstance(criterion, Compartment):
            pairs = len(types) > 1
            sql, args = self.members(criterion, types, pairs=pairs)
            target = f"({row}.resource_type, {row}.id)" if pairs else f"{row}.id"
            return f"{target} IN ({sql})", args
        assert len(types) == 1
        sql, args = self.ids(criterion, types[0])
        return f"{row}.id IN ({sql})", args

    def members(self, compartment: Compartment, types: Sequence[str], *, pairs: bool) -> Sql:
        """SELECT of the (type and) ids of the compartment's resources of `types`: those
        whose member parameters refer to the focal resource (one index probe per type
        and parameter), and the focal resource itself where the definition says `{def}`."""
        alias = self.alias("m")
        org, org_args = self.org(alias)
        members = [(t, code) for t in types for code in compartment.codes(t)]
        columns = f"{alias}.resource_type, {alias}.id" if pairs else f"{alias}.id"
        parts: list[Sql] = []
        if members:
            parts.append(
                (
                    f"SELECT {columns} FROM unnest(%s::text[], %s::text[]) AS k (rtype, param)"
                    f" JOIN fhir_idx_reference {alias}"
                    f' ON {alias}.resource_type = k.rtype COLLATE "C"'
                    f' AND {alias}.param = k.param COLLATE "C"'
                    f" WHERE {org}{alias}.target_id = %s AND {alias}.target_type = %s",
                    [
                        [t for t, _ in members],
                        [code for _, code in members],
                        *org_args,
                        compartment.focal_id,
                        compartment.focal_type,
                    ],
                )
            )
        if compartment.focal_type in types and compartment.focal_type in compartment.focal_types:
            focal = (
                '%s::text COLLATE "C", %s::text COLLATE "C"' if pairs else '%s::text COLLATE "C"'
            )
            focal_args = [compartment.focal_type] if pairs else []
            parts.append((f"SELECT {focal}", [*focal_args, compartment.focal_id]))
        if not parts:
            return ("SELECT NULL::text, NULL::text" if pairs else "SELECT NULL::text") + (
                " WHERE FALSE"
            ), []
        return _join(parts, " UNION ALL ")

    def absent(self, clause: Clause, row: str) -> Sql:
        """:not and :missing=true: no index row of the resource matches. A probe by id
        per row (`OFFSET 0`: not an anti-join, see Compiler.probe)."""
        alias = self.alias("x")
        table, (param, param_args) = self.table_param(clause, alias)
        org, org_args = self.org(alias)
        values: Sql = ("TRUE", []) if clause.missing else self.values(clause, alias)
        return (
            f"NOT EXISTS (SELECT 1 FROM {table} {alias} WHERE {org}{alias}.resource_type ="
            f" {row}.resource_type AND {alias}.id = {row}.id AND {param}"
            f" AND {values[0]} OFFSET 0)",
            [*org_args, *param_args, *values[1]],
        )

    def ids(self, criterion: Any, resource_type: str) -> Sql:
        """SELECT of the ids of resources of one type that match a criterion."""
        if isinstance(criterion, Clause):
            clause, everything = self.tenant_tag(criterion)
            simple = (
                clause is not None
                and not everything
                and not clause.negated
                and not clause.param.column
            )
            if simple and clause is not None:
                if clause.missing is False:
                    clause = Clause(clause.param, None, ())
                return self.rows(clause, self.alias("x"), [resource_type], pairs=False)
            row = self.alias("r")
            org, org_args = self.org(row)
            condition, args = self.match(criterion, row, [resource_type])
            return (
                f"SELECT {row}.id FROM fhir_resource {row} WHERE {org}{row}.resource_type = %s"
                f" AND {row}.deleted_at IS NULL AND {condition}",
                [*org_args, resource_type, *args],
            )
        if isinstance(criterion, Chain):
            # One branch per target type, so each can be driven from its innermost
            # match through the reference index (an OR of types could only filter):
            # one probe of (param, target_id) per distinct inner match.
            branches = []
            for target_type, inner in criterion.targets:
                alias = self.alias("c")
                org, org_args = self.org(alias)
                sql, args = self.ids(inner, target_type)
                param, param_args = _params(alias, criterion.param)
                branches.append(
                    (
                        f"SELECT {alias}.id FROM (SELECT DISTINCT * FROM ({sql}) t) t (id)"
                        f" CROSS JOIN LATERAL (SELECT {alias}.id FROM fhir_idx_reference {alias}"
                        f" WHERE {org}{alias}.resource_type = %s AND {param}"
                        f" AND {alias}.target_type = %s AND {alias}.target_id = t.id OFFSET 0)"
                        f" {alias}",
                        [*args, *org_args, resource_type, *param_args, target_type],
                    )
                )
            return _join(branches, " UNION ALL ")
        if isinstance(criterion, Compartment):
            return self.members(criterion, [resource_type], pairs=False)
        assert isinstance(criterion, Has)
        # Driven from the source matches: one probe of the reference rows by id each.
        alias = self.alias("h")
        org, org_args = self.org(alias)
        sql, args = self.ids(criterion.criterion, criterion.source_type)
        param, param_args = _params(alias, criterion.param)
        return (
            f"SELECT {alias}.target_id FROM (SELECT DISTINCT * FROM ({sql}) s) s (id)"
            f" CROSS JOIN LATERAL (SELECT {alias}.target_id FROM fhir_idx_reference {alias}"
            f" WHERE {org}{alias}.resource_type = %s AND {alias}.id = s.id AND {param}"
            f" AND {alias}.target_type = %s OFFSET 0) {alias}",
            [*args, *org_args, criterion.source_type, *param_args, resource_type],
        )

    def _plain(self, criterion: Clause) -> Clause:
        """A clause that drives (_Statement._drives) as the clause its index rows
        match: without the tenant's own _tag values, `:missing=false` as any value."""
        clause, _ = self.tenant_tag(criterion)
        assert clause is not None
        return Clause(clause.param, None, ()) if clause.missing is False else clause

    def ids_of_types(self, criterion: Clause, types: Sequence[str]) -> Sql:
        """SELECT of the (type, id) pairs of `types` whose index rows match a clause
        that drives (_Statement._drives)."""
        return self.rows(self._plain(criterion), self.alias("x"), types, pairs=True)

    def probe_by_type(self, criterion: Clause, row: str) -> Sql:
        """Whether the candidate `row` (columns resource_type and id) matches a clause
        that drives: a correlated EXISTS, one index probe by type and id (see probe)."""
        clause = self._plain(criterion)
        alias = self.alias("x")
        table, (param, param_args) = self.table_param(clause, alias)
        org, org_args = self.org(alias)
        values, value_args = self.values(clause, alias)
        return (
            f"EXISTS (SELECT 1 FROM {table} {alias} WHERE {org}{alias}.resource_type ="
            f" {row}.resource_type AND {alias}.id = {row}.id AND {param} AND {values}"
            " OFFSET 0)",
            [*org_args, *param_args, *value_args],
        )

    def subject_ids(self, driver: Any, token: Clause, resource_type: str) -> Sql:
        """SELECT of the ids whose token rows match `token` and carry a subject the
        driver (a `subject` reference clause, or a chain through `subject`) accepts:
        the same matches as the two criteria apart, from one index range per subject
        (fhir_idx_token_subject, migration 0008)."""
        alias = self.alias("x")
        org, org_args = self.org(alias)
        param, param_args = _params(alias, token.param)
        values, value_args = self.values(token, alias)
        rows = (
            f"SELECT {alias}.id FROM fhir_idx_token {alias} WHERE {org}"
            f"{alias}.resource_type = %s AND {param} AND {values}"
        )
        rows_args = [*org_args, resource_type, *param_args, *value_args]
        if isinstance(driver, Clause):
            (value,) = driver.values
            sql, args = f"{rows} AND {alias}.subject_id = %s", [*rows_args, value.id]
            target_type = value.type or _type_modifier(driver.modifier)
            if target_type and "/" not in value.id:
                sql, args = f"{sql} AND {alias}.subject_type = %s", [*args, target_type]
            if driver.param.restrict_to:
                sql, args = (
                    f"{sql} AND {alias}.subject_type = %s",
                    [*args, driver.param.restrict_to],
                )
            return sql, args
        branches: list[Sql] = []
        for target_type, inner in driver.targets:
            inner_sql, inner_args = self.ids(inner, target_type)
            restrict = driver.param.restrict_to
            branches.append(
                (
                    f"SELECT {alias}.id FROM (SELECT DISTINCT * FROM ({inner_sql}) t) t (id)"
                    f" CROSS JOIN LATERAL ({rows} AND {alias}.subject_id = t.id"
                    f" AND {alias}.subject_type = %s"
                    + (f" AND {alias}.subject_type = %s" if restrict else "")
                    + f" OFFSET 0) {alias}",
                    [*inner_args, *rows_args, target_type, *([restrict] if restrict else [])],
                )
            )
        return _join(branches, " UNION ALL ")

    def probe(self, criterion: Any, target: str, resource_type: str) -> Sql:
        """Whether the resource of `resource_type` whose id is the SQL expression
        `target` matches a criterion: a correlated EXISTS, one index probe per row.

        `OFFSET 0` keeps PostgreSQL from turning the EXISTS into a join: planned as a
        join, a tenant the statistics do not know (a new one, or tables loaded since
        their last ANALYZE) is estimated at one row on both sides, and the planner
        may pick a nested loop that scans the whole parameter range per candidate
        with the ids compared in a join filter (quadratic: `_has` and a broad
        quantity search ran into the 10 s statement timeout on 18,000 resources).
        As a probe the cost is one lookup by id per candidate, whatever the
        statistics say."""
        if isinstance(criterion, Clause):
            clause, everything = self.tenant_tag(criterion)
            simple = (
                clause is not None
                and not everything
                and not clause.negated
                and not clause.param.column
            )
            if simple and clause is not None:
                if clause.missing is False:
                    clause = Clause(clause.param, None, ())
                alias = self.alias("x")
                sql, args = self.rows(clause, alias, [resource_type], pairs=False)
                return f"EXISTS ({sql} AND {alias}.id = {target} OFFSET 0)", args
        if isinstance(criterion, Clause | Compartment):
            row = self.alias("r")
            org, org_args = self.org(row)
            condition, args = self.match(criterion, row, [resource_type])
            return (
                f"EXISTS (SELECT 1 FROM fhir_resource {row} WHERE {org}{row}.resource_type = %s"
                f" AND {row}.id = {target} AND ({row}.deleted_at IS NULL) IS TRUE"
                f" AND {condition} OFFSET 0)",
                [*org_args, resource_type, *args],
            )
        if isinstance(criterion, Chain):
            branches = []
            for target_type, inner in criterion.targets:
                alias = self.alias("c")
                org, org_args = self.org(alias)
                param, param_args = _params(alias, criterion.param)
                nested, nested_args = self.probe(inner, f"{alias}.target_id", target_type)
                branches.append(
                    (
                        f"EXISTS (SELECT 1 FROM fhir_idx_reference {alias} WHERE {org}"
                        f"{alias}.resource_type = %s AND {alias}.id = {target} AND {param}"
                        f" AND {alias}.target_type = %s AND {nested} OFFSET 0)",
                        [*org_args, resource_type, *param_args, target_type, *nested_args],
                    )
                )
            sql, args = _join(branches, " OR ")
            return f"({sql})", args
        assert isinstance(criterion, Has)
        alias = self.alias("h")
        org, org_args = self.org(alias)
        param, param_args = _params(alias, criterion.param)
        nested, nested_args = self.probe(criterion.criterion, f"{alias}.id", criterion.source_type)
        return (
            f"EXISTS (SELECT 1 FROM fhir_idx_reference {alias} WHERE {org}"
            f"{alias}.resource_type = %s AND {param} AND {alias}.target_type = %s"
            f" AND {alias}.target_id = {target} AND {nested} OFFSET 0)",
            [*org_args, criterion.source_type, *param_args, resource_type, *nested_args],
        )

    # --- sorting ----------------------------------------------------------------------------

    def sort_key(self, code: str, descending: bool, row: str, resource_type: str) -> Sql:
        param = get_param(resource_type, code)
        assert param is not None
        if param.column == "id":
            return f"{row}.id", []
        if param.column == "last_updated":
            return f"{row}.last_updated", []
        table = TABLE[param.type]
        column = {
            "string": ("value", "value"),
            "token": ("code", "code"),
            "date": ("low", "high"),
            "number": ("low", "high"),
            "quantity": ("low", "high"),
            "reference": ("target_id", "target_id"),
            "uri": ("value", "value"),
        }[param.type][1 if descending else 0]
        # GROUP BY keeps PostgreSQL from answering min/max by walking the value index
        # of the whole parameter in order and filtering on the id (its plan when the
        # statistics do not know the tenant): the key is one probe by id per row.
        aggregate = "max" if descending else "min"
        alias = self.alias("s")
        org, org_args = self.org(alias)
        param_sql, param_args = _params(alias, param)
        return (
            f"(SELECT {aggregate}({alias}.{column}) FROM {table} {alias} WHERE {org}"
            f"{alias}.resource_type = {row}.resource_type AND {alias}.id = {row}.id"
            f" AND {param_sql} GROUP BY {alias}.id)",
            [*org_args, *param_args],
        )


# --- running a search --------------------------------------------------------------------------


def _versions(rows: list[tuple[Any, ...]]) -> list[Version]:
    return [Version(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def _type_modifier(modifier: str | None) -> str | None:
    return modifier if modifier and modifier[0].isupper() else None


def _subject_token(driver: Any, criteria: Sequence[Any]) -> Clause | None:
    """The token clause among `criteria` that can be read together with `driver`
    from the subject on the token rows (Compiler.subject_ids), if any: the driver is
    one plain `subject` reference value or a chain through `subject`, the clause a
    plain positive token clause."""
    if isinstance(driver, Clause):
        if (
            driver.param.type != "reference"
            or driver.param.stored != ("subject",)
            or driver.negated
            or driver.missing is not None
            or (driver.modifier is not None and _type_modifier(driver.modifier) is None)
            or len(driver.values) != 1
            or not isinstance(driver.values[0], ReferenceValue)
        ):
            return None
    elif not (isinstance(driver, Chain) and driver.param.stored == ("subject",)):
        return None
    for criterion in criteria:
        if (
            isinstance(criterion, Clause)
            and criterion is not driver
            and criterion.param.type == "token"
            and not criterion.param.column
            and criterion.param.code != "_tag"
            and criterion.modifier is None
            and criterion.missing is None
            and criterion.values
        ):
            return criterion
    return None


def _driver_rank(criterion: Any) -> int:
    """References and compartments drive first (usually the narrowest); then `_has`,
    whose probe by target, left to a planner that does not know the tenant, may scan
    the source's references per candidate; then the rest, in the query's order."""
    if isinstance(criterion, Compartment):
        return 0
    if isinstance(criterion, Clause) and criterion.param.type == "reference":
        return 0
    return 1 if isinstance(criterion, Has) else 2


def _shared_shape(query: SearchQuery) -> bool:
    """True when one statement can search every type at once: only plain clauses, each
    of the same kind of parameter on every type (then the SQL is the same)."""
    first = query.criteria[query.types[0]]
    for resource_type in query.types[1:]:
        other = query.criteria[resource_type]
        if len(other) != len(first):
            return False
        for a, b in zip(first, other, strict=True):
            if isinstance(a, Compartment) and a is b:
                continue  # one criterion over every type (members() pairs them)
            if not (isinstance(a, Clause) and isinstance(b, Clause)):
                return False
            if a.param.type != b.param.type or a.modifier != b.modifier:
                return False
            if (a.param.stored, a.param.restrict_to) != (b.param.stored, b.param.restrict_to):
                return False  # rows under other codes
    for key in query.sort:
        kinds = {
            (p.type, p.stored, p.restrict_to) for t in query.types if (p := get_param(t, key.code))
        }
        if len(kinds) > 1:
            return False
    return all(isinstance(c, Clause | Compartment) for c in first)


class _Statement:
    """The matching rows of a query, as one SELECT (optionally a UNION ALL of one
    SELECT per type), with sort keys as columns s0, s1, ..."""

    def __init__(self, compiler: Compiler, query: SearchQuery) -> None:
        self.compiler = compiler
        self.query = query

    def branch(self, types: Sequence[str], *, sort: bool) -> Sql:
        compiler = self.compiler
        criteria = self.query.criteria[types[0]]
        if len(types) == 1:
            # A reference (one patient's observations, say) is usually the narrowest
            # criterion; otherwise the first that can drive, in the query's order.
            drivers = [c for c in criteria if self._drives(c) or isinstance(c, Has)]
            driver = min(drivers, key=_driver_rank) if drivers else None
            # A subject (or a chain through it) next to a token clause: both are read
            # from one range of the token rows, which carry the subject (0008).
            paired = [c for c in drivers if _subject_token(c, criteria) is not None]
            if paired:
                driver = paired[0]
            if driver is not None:
                rest = [c for c in criteria if c is not driver]
                return self._from_index(types[0], driver, rest, sort=sort)
        else:
            # Several types in one statement (_shared_shape: plain clauses and the
            # compartment, the same SQL on every type): driven the same way, from
            # (type, id) pairs.
            drivers = [c for c in criteria if self._drives(c)]
            if drivers:
                driver = min(drivers, key=_driver_rank)
                rest = [c for c in criteria if c is not driver]
                return self._from_pairs(types, driver, rest, sort=sort)
        org, org_args = compiler.org("r")
        type_sql, type_args = compiler.types("r", types)
        conditions: list[Sql] = [compiler.match(c, "r", types) for c in criteria]
        where, where_args = _join(
            [(f"{org}{type_sql} AND r.deleted_at IS NULL", [*org_args, *type_args]), *conditions],
            " AND ",
        )
        keys: list[Sql] = []
        if sort:
            keys = [compiler.sort_key(k.code, k.descending, "r", types[0]) for k in self.query.sort]
        columns, column_args = _join(
            [
                ("r.resource_type, r.id", []),
                *[(f"{k[0]} AS s{n}", k[1]) for n, k in enumerate(keys)],
            ],
            ", ",
        )
        return f"SELECT {columns} FROM fhir_resource r WHERE {where}", [*column_args, *where_args]

    def _drives(self, criterion: Any) -> bool:
        """Whether the criterion's ids come from the type's own index rows, which exist
        for live resources only (a delete removes them in its transaction): then they
        can drive the search without reading fhir_resource. Not `_has`, whose ids are
        other resources' references (to deleted resources too)."""
        if isinstance(criterion, Chain | Compartment):
            return True  # (a compartment's focal resource is live: the view checked)
        if not isinstance(criterion, Clause) or criterion.param.column:
            return False
        clause, everything = self.compiler.tenant_tag(criterion)
        return clause is not None and not everything and not clause.negated and not clause.missing

    def _from_index(self, resource_type: str, driver: Any, rest: list[Any], *, sort: bool) -> Sql:
        """The matches driven from one criterion's ids, computed once as a set; every
        other criterion is probed per candidate (Compiler.probe), and so are the sort
        keys. The cost follows the driver's matches whatever the planner's statistics
        know of the tenant: written as `r.id IN (subquery)` joins, a tenant loaded since
        the last ANALYZE (estimated at one row) got nested loops that compared ids in
        join filters, quadratic in the matches (`_has` and a broad quantity search
        sorted with a total ran into the 10 s statement timeout on 18,000 resources).

        fhir_resource is read (one primary-key probe per candidate) only when needed:
        `_has` drives (its ids may be deleted resources), a criterion or a sort key is
        on the resource's own columns, or a criterion is no index probe (:not,
        :missing=true, a compartment)."""
        compiler = self.compiler
        token = _subject_token(driver, rest)
        if token is not None:
            ids, ids_args = compiler.subject_ids(driver, token, resource_type)
            rest = [c for c in rest if c is not token]
        else:
            ids, ids_args = compiler.ids(driver, resource_type)
        probes: list[Sql] = []
        on_row: list[Any] = []
        for criterion in rest:
            if isinstance(criterion, Chain | Has) or (
                isinstance(criterion, Clause) and self._drives(criterion)
            ):
                probes.append(compiler.probe(criterion, "r.id", resource_type))
            elif isinstance(criterion, Clause) and criterion.param.column == "id":
                probes.append(compiler.match(criterion, "r", [resource_type]))
            else:
                on_row.append(criterion)
        keys = [k for k in self.query.sort] if sort else []
        by_column = any(
            (p := get_param(resource_type, k.code)) is not None and p.column == "last_updated"
            for k in keys
        )
        if isinstance(driver, Has) or on_row or by_column:
            row = compiler.alias("l")
            org, org_args = compiler.org(row)
            conditions = [compiler.match(c, row, [resource_type]) for c in on_row]
            condition, condition_args = _join(
                [(f"{row}.resource_type = %s", [resource_type]), *conditions], " AND "
            )
            # `(deleted_at IS NULL) IS TRUE`: a lookup by id through the primary key.
            # Spelled `deleted_at IS NULL`, the partial index of live resources by
            # last_updated qualifies too, and where the statistics do not know the
            # tenant it looks as cheap, then reads the type's rows per candidate.
            live = (
                f"SELECT {{}} FROM fhir_resource {row} WHERE {org}{condition}"
                f" AND {row}.id = r.id AND ({row}.deleted_at IS NULL) IS TRUE"
            )
            live_args = [*org_args, *condition_args]
            probes.append((f"EXISTS ({live.format('1')} OFFSET 0)", live_args))
        else:
            live, live_args = "", []
        key_sql: list[Sql] = []
        for key in keys:
            param = get_param(resource_type, key.code)
            assert param is not None
            if param.column == "last_updated":
                key_sql.append((f"({live.format(f'{row}.last_updated')})", live_args))
            elif param.column == "id":
                key_sql.append(("r.id", []))
            else:
                key_sql.append(compiler.sort_key(key.code, key.descending, "r", resource_type))
        where, where_args = _join(probes, " AND ") if probes else ("TRUE", [])
        columns, column_args = _join(
            [
                ("r.resource_type, r.id", []),
                *[(f"{k[0]} AS s{n}", k[1]) for n, k in enumerate(key_sql)],
            ],
            ", ",
        )
        return (
            f'SELECT {columns} FROM (SELECT DISTINCT %s::text COLLATE "C"'
            f" AS resource_type, d.id FROM ({ids}) d (id)) r WHERE {where}",
            [*column_args, resource_type, *ids_args, *where_args],
        )

    def _from_pairs(self, types: Sequence[str], driver: Any, rest: list[Any], *, sort: bool) -> Sql:
        """_from_index over several types at once: the driver's (type, id) pairs,
        computed once as a set, every other criterion probed per candidate by type
        and id. Written as `(r.resource_type, r.id) IN (subquery)` joins over
        fhir_resource, a tenant the statistics did not know got nested loops that
        read a whole parameter range per candidate (quadratic: two clauses over
        Observation and Condition took 1.8 s on 12,000 resources)."""
        compiler = self.compiler
        if isinstance(driver, Compartment):
            ids, ids_args = compiler.members(driver, types, pairs=True)
        else:
            ids, ids_args = compiler.ids_of_types(driver, types)
        probes: list[Sql] = []
        on_row: list[Any] = []
        for criterion in rest:
            if isinstance(criterion, Clause) and self._drives(criterion):
                probes.append(compiler.probe_by_type(criterion, "r"))
            elif isinstance(criterion, Clause) and criterion.param.column == "id":
                probes.append(compiler.match(criterion, "r", types))
            else:
                on_row.append(criterion)
        keys = [k for k in self.query.sort] if sort else []
        by_column = any(
            (p := get_param(types[0], k.code)) is not None and p.column == "last_updated"
            for k in keys
        )
        row = compiler.alias("l")
        live, live_args = "", []
        if on_row or by_column:
            org, org_args = compiler.org(row)
            conditions = [compiler.match(c, row, types) for c in on_row]
            condition, condition_args = _join(
                [(f"{row}.resource_type = r.resource_type", []), *conditions], " AND "
            )
            # `(deleted_at IS NULL) IS TRUE`: a lookup by primary key (see _from_index).
            live = (
                f"SELECT {{}} FROM fhir_resource {row} WHERE {org}{condition}"
                f" AND {row}.id = r.id AND ({row}.deleted_at IS NULL) IS TRUE"
            )
            live_args = [*org_args, *condition_args]
            probes.append((f"EXISTS ({live.format('1')} OFFSET 0)", live_args))
        key_sql: list[Sql] = []
        for key in keys:
            param = get_param(types[0], key.code)
            assert param is not None
            if param.column == "last_updated":
                key_sql.append((f"({live.format(f'{row}.last_updated')})", live_args))
            elif param.column == "id":
                key_sql.append(("r.id", []))
            else:
                key_sql.append(compiler.sort_key(key.code, key.descending, "r", types[0]))
        where, where_args = _join(probes, " AND ") if probes else ("TRUE", [])
        columns, column_args = _join(
            [
                ("r.resource_type, r.id", []),
                *[(f"{k[0]} AS s{n}", k[1]) for n, k in enumerate(key_sql)],
            ],
            ", ",
        )
        return (
            f"SELECT {columns} FROM (SELECT DISTINCT d.resource_type, d.id"
            f" FROM ({ids}) d (resource_type, id)) r WHERE {where}",
            [*column_args, *ids_args, *where_args],
        )

    def matching(self, *, sort: bool) -> Sql:
        types = self.query.types
        if len(types) == 1 or _shared_shape(self.query):
            return self.branch(types, sort=sort)
        parts = [self.branch([t], sort=sort) for t in types]
        sql, args = _join([(f"({p[0]})", p[1]) for p in parts], " UNION ALL ")
        return sql, args


def _order(query: SearchQuery, reverse: bool) -> str:
    keys = []
    for n, key in enumerate(query.sort):
        descending = key.descending != reverse
        keys.append(f"q.s{n} {'DESC' if descending else 'ASC'} NULLS LAST")
    direction = "DESC" if reverse else "ASC"
    keys += [f"q.resource_type {direction}", f"q.id {direction}"]
    return ", ".join(keys)


def _page(
    cursor: Any, query: SearchQuery, statement: _Statement
) -> tuple[list[Version], bool, int | None]:
    """The page's resources, whether more follow (in the direction of travel), and the
    total, from one statement.

    The matches (type, id and sort keys only) are computed once, MATERIALIZED, then
    counted and paged. Without the fence PostgreSQL may walk fhir_resource in id
    order betting that LIMIT stops it early, which reads every resource of the type
    when few or none match; with it the cost follows the number of matches. The page's
    resources are then read by primary key, one lookup each (a LATERAL with OFFSET 0:
    as a join, a planner that estimated the page at one row scanned the type's
    resources once per page entry, comparing ids in a join filter)."""
    sql, args = statement.matching(sort=bool(query.sort))
    where, where_args, offset = "", [], 0
    reverse = False
    position = query.cursor
    if not query.sort and position.after:
        where, where_args = " WHERE (q.resource_type, q.id) > (%s, %s)", list(position.after)
    elif not query.sort and position.before:
        where, where_args = " WHERE (q.resource_type, q.id) < (%s, %s)", list(position.before)
        reverse = True
    elif query.sort or position.offset:
        offset = position.offset
    order = _order(query, reverse)
    keys = "".join(f", q.s{n}" for n in range(len(query.sort)))
    org, org_args = statement.compiler.org("r")
    counted = query.total != "none"
    total = "(SELECT count(*) FROM m)" if counted else "NULL::bigint"
    cursor.execute(
        f"WITH m AS MATERIALIZED ({sql})"
        f" SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content, t.total"
        f" FROM (SELECT {total} AS total) t LEFT JOIN LATERAL ("
        f"SELECT q.resource_type, q.id{keys} FROM m q{where} ORDER BY {order} LIMIT %s OFFSET %s"
        f") q ON TRUE LEFT JOIN LATERAL (SELECT r.* FROM fhir_resource r WHERE {org}"
        f"r.resource_type = q.resource_type AND r.id = q.id OFFSET 0) r ON TRUE ORDER BY {order}",
        [*args, *where_args, query.count + 1, offset, *org_args],
    )
    rows = cursor.fetchall()
    found = [row for row in rows if row[1] is not None]
    more = len(found) > query.count
    found = found[: query.count]
    if reverse:
        found.reverse()
    return _versions(found), more, int(rows[0][5]) if counted else None


def _count(cursor: Any, statement: _Statement) -> int:
    """The exact number of matches. `_total=estimate` gets it too: the planner's row
    estimate comes from table-wide statistics, i.e. from every tenant's values, so
    reporting it would tell one tenant how common a value is among the others."""
    sql, args = statement.matching(sort=False)
    cursor.execute(f"SELECT count(*) FROM ({sql}) q", args)
    return int(cursor.fetchone()[0])


def _key(version: Version) -> tuple[str, str]:
    return version.resource_type, version.id


def _links(query: SearchQuery, matches: list[Version], more: bool) -> tuple[Cursor | None, ...]:
    """Cursors of the next and previous pages (None: there is none). With _sort pages
    go by offset; in the default order by key, so they stay put while data changes."""
    position, count = query.cursor, query.count
    if query.sort:
        offset = position.offset
        following = Cursor(offset + count) if more else None
        return following, Cursor(max(0, offset - count)) if offset > 0 else None
    if position.before:
        # Read backwards: `more` says whether anything precedes this page.
        offset = position.offset if more else 0
        following = Cursor(offset + count, after=_key(matches[-1])) if matches else None
        preceding = (
            Cursor(max(0, offset - count), before=_key(matches[0])) if more and matches else None
        )
        return following, preceding
    offset = position.offset
    following = Cursor(offset + count, after=_key(matches[-1])) if more and matches else None
    if not offset and not position.after:
        return following, None
    if not matches:
        return following, Cursor(0)
    return following, Cursor(max(0, offset - count), before=_key(matches[0]))


def _fetch(cursor: Any, compiler: Compiler, keys: dict[str, set[str]]) -> list[Version]:
    found: list[Version] = []
    for resource_type, ids in sorted(keys.items()):
        org, org_args = compiler.org("r")
        cursor.execute(
            f"SELECT {COLUMNS} FROM fhir_resource r WHERE {org}r.resource_type = %s"
            " AND r.id = ANY(%s) AND r.deleted_at IS NULL ORDER BY r.id",
            [*org_args, resource_type, sorted(ids)],
        )
        found += _versions(cursor.fetchall())
    return found


def _include_targets(
    cursor: Any, compiler: Compiler, include: Include, sources: list[Version]
) -> dict[str, set[str]]:
    types = (
        {v.resource_type for v in sources} if include.source_type == "*" else {include.source_type}
    )
    targets: dict[str, set[str]] = {}
    for source_type in sorted(types):
        ids = [v.id for v in sources if v.resource_type == source_type]
        if not ids:
            continue
        org, org_args = compiler.org("x")
        sql = (
            f"SELECT DISTINCT x.target_type, x.target_id FROM fhir_idx_reference x WHERE {org}"
            "x.resource_type = %s AND x.id = ANY(%s) AND x.target_type <> ''"
        )
        args: list[Any] = [*org_args, source_type, ids]
        if include.param != "*":
            param = get_param(source_type, include.param)
            if param is None:
                continue  # no such parameter on this type: nothing to include
            param_sql, param_args = _params("x", param)
            sql += f" AND {param_sql}"
            args += param_args
        if include.target_type:
            sql += " AND x.target_type = %s"
            args.append(include.target_type)
        cursor.execute(sql + " LIMIT %s", [*args, MAX_INCLUDED + 1])
        for target_type, target_id in cursor.fetchall():
            targets.setdefault(target_type, set()).add(target_id)
    return targets


def _revinclude(
    cursor: Any, compiler: Compiler, include: Include, targets: list[Version]
) -> list[Version]:
    found: list[Version] = []
    for target_type in sorted({v.resource_type for v in targets}):
        if include.target_type and include.target_type != target_type:
            continue
        ids = [v.id for v in targets if v.resource_type == target_type]
        param = get_param(include.source_type, include.param)
        if param is None:
            continue
        org, org_args = compiler.org("r")
        xorg, xorg_args = compiler.org("x")
        param_sql, param_args = _params("x", param)
        # Driven from the reference rows, one primary-key probe per source (as in
        # _Statement._from_index): `r.id IN (...)` let a planner that did not know the
        # tenant scan the source type per reference (a 538 ms revinclude took > 60 s).
        cursor.execute(
            f"SELECT {COLUMNS} FROM (SELECT DISTINCT x.id FROM fhir_idx_reference x"
            f" WHERE {xorg}x.resource_type = %s AND {param_sql} AND x.target_type = %s"
            " AND x.target_id = ANY(%s)) d CROSS JOIN LATERAL (SELECT r.* FROM fhir_resource r"
            f" WHERE {org}r.resource_type = %s AND r.id = d.id"
            " AND (r.deleted_at IS NULL) IS TRUE OFFSET 0) r ORDER BY r.id LIMIT %s",
            [
                *xorg_args,
                include.source_type,
                *param_args,
                target_type,
                ids,
                *org_args,
                include.source_type,
                MAX_INCLUDED + 1,
            ],
        )
        found += _versions(cursor.fetchall())
    return found


def _included(
    cursor: Any, compiler: Compiler, query: SearchQuery, matches: list[Version]
) -> tuple[list[Version], bool]:
    seen = {(v.resource_type, v.id) for v in matches}
    included: list[Version] = []
    frontier = matches
    for round_number in range(MAX_ITERATIONS + 1):
        includes = [i for i in query.includes if round_number == 0 or i.iterate]
        revincludes = [i for i in query.revincludes if round_number == 0 or i.iterate]
        if not frontier or not (includes or revincludes):
            break
        new: list[Version] = []
        for include in includes:
            targets = _include_targets(cursor, compiler, include, frontier)
            for resource_type in targets:
                targets[resource_type] -= {i for t, i in seen if t == resource_type}
            new += _fetch(cursor, compiler, {t: ids for t, ids in targets.items() if ids})
            seen.update((v.resource_type, v.id) for v in new)
        for include in revincludes:
            for version in _revinclude(cursor, compiler, include, frontier):
                if (version.resource_type, version.id) not in seen:
                    seen.add((version.resource_type, version.id))
                    new.append(version)
        included += new
        if len(included) > MAX_INCLUDED:
            return included[:MAX_INCLUDED], True
        frontier = new
    return included, False


def run_search(tenant: UUID, query: SearchQuery, *, tag_wall: bool = True) -> SearchResult:
    """Run a parsed search inside the caller's tenant transaction."""
    compiler = Compiler(tenant, tag_wall)
    statement = _Statement(compiler, query)
    with connection.cursor() as cursor:
        if query.summary == "count" or query.count == 0:
            return SearchResult([], total=_count(cursor, statement))
        matches, more, total = _page(cursor, query, statement)
        following, preceding = _links(query, matches, more)
        included, cut = _included(cursor, compiler, query, matches) if matches else ([], False)
    notes = [f"Only the first {MAX_INCLUDED} included resources are returned"] if cut else []
    return SearchResult(matches, included, total, following, preceding, notes)
