"""The ledger's usage reads: totals by group, the records of a period page by page (the CSV download), and BYOK
usage per provider. `LedgerQueries` (proxy/ledger/queries.py) runs them with its own `_fetch`: timed out,
unreachable PostgreSQL is 503 `ledger_unavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from proxy.db.pool import Row
from proxy.errors import ProxyError

_GROUP_KEYS = {"user": "user_id", "model": "model", "day": "to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
               "price_version": "price_version", "key_id": "key_id", "end_user": "end_user", "tag": "t.tag",
               "power_level": "power_level"}
# group_by=tag: a record counts once in each of its tags' groups (so tag totals can exceed the total), and a
# record without tags in the null group
_TAG_JOIN = "LEFT JOIN LATERAL unnest(tags) AS t(tag) ON true"
# the usage records the CSV download streams: one keyset page, oldest first, from (recorded_at, request_id)
# after ($3, $7) (the first page: $3 is the period's start, $7 null); usage_org_time serves the range
_USAGE_RECORDS_SQL = """
SELECT request_id, recorded_at, user_id, key_id, end_user, tags, model, prompt_tokens, completion_tokens, charged,
       list_price, usage_source, byok, price_version
  FROM creditgate.usage_records
 WHERE org_id = $1 AND ($2::text IS NULL OR user_id = $2) AND recorded_at >= $3 AND recorded_at < $4
   AND ($5::text IS NULL OR end_user = $5) AND ($6::text IS NULL OR $6 = ANY(tags))
   AND ($7::text IS NULL OR recorded_at > $3 OR request_id > $7)
 ORDER BY recorded_at, request_id LIMIT $8"""


class UsageQueries:
    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError  # LedgerQueries runs the statements

    async def usage(self, org_id: str, *, group_by: str, user_id: str | None, start: datetime | None,
                    end: datetime | None, end_user: str | None = None, tag: str | None = None,
                    limit: int | None = None) -> Sequence[Row]:
        """Usage totals grouped by "user" | "model" | "day" (UTC calendar days) | "price_version" | "key_id" |
        "end_user" | "tag" (a record counts in each of its tags; untagged ones in the null group), ordered
        by the group, within [start, end), optionally of one member, one end user, one tag. With `limit`,
        at most `limit` + 1 groups: one more than `limit` tells the caller there are more."""
        key = _GROUP_KEYS.get(group_by)
        if key is None:
            raise ProxyError.invalid_value("group_by", f"group_by must be one of: {', '.join(_GROUP_KEYS)}.")
        rows = await self._fetch(
            f"""SELECT {key} AS k, count(*) AS requests, sum(prompt_tokens)::bigint AS prompt_tokens,
                       sum(completion_tokens)::bigint AS completion_tokens, sum(charged)::bigint AS charged,
                       sum(list_price)::bigint AS list_price
                  FROM creditgate.usage_records {_TAG_JOIN if group_by == "tag" else ""}
                 WHERE org_id = $1 AND ($2::text IS NULL OR user_id = $2)
                   AND ($3::timestamptz IS NULL OR recorded_at >= $3) AND ($4::timestamptz IS NULL OR recorded_at < $4)
                   AND ($5::text IS NULL OR end_user = $5) AND ($6::text IS NULL OR $6 = ANY(tags))
                 GROUP BY 1 ORDER BY 1 LIMIT $7""",
            org_id, user_id, start, end, end_user, tag, None if limit is None else limit + 1)
        return [{group_by: r["k"], "requests": r["requests"], "prompt_tokens": r["prompt_tokens"],
                 "completion_tokens": r["completion_tokens"], "charged_millicredits": r["charged"],
                 "list_price_millicredits": r["list_price"]} for r in rows]

    async def usage_records(self, org_id: str, *, user_id: str | None, start: datetime, end: datetime,
                            end_user: str | None, tag: str | None, after: tuple[datetime, str] | None,
                            limit: int) -> Sequence[Row]:
        """One page (at most `limit`) of the usage records in [start, end), oldest first (recorded_at, then
        request_id), after `after` (the previous page's last (recorded_at, request_id)), with the same
        filters as `usage`: what the CSV download streams, one short query per page."""
        since, after_id = (start, None) if after is None else after
        rows = await self._fetch(_USAGE_RECORDS_SQL, org_id, user_id, since, end, end_user, tag, after_id, limit)
        return [{"request_id": r["request_id"], "recorded_at": r["recorded_at"], "user_id": r["user_id"],
                 "key_id": r["key_id"], "end_user": r["end_user"], "tags": list(r["tags"] or ()),
                 "model": r["model"], "prompt_tokens": r["prompt_tokens"],
                 "completion_tokens": r["completion_tokens"], "charged_millicredits": r["charged"],
                 "list_price_millicredits": r["list_price"], "usage_source": r["usage_source"], "byok": r["byok"],
                 "price_version": r["price_version"]} for r in rows]

    async def provider_usage(self, org_id: str, user_id: str | None, provider: str) -> Row:
        """BYOK usage for one provider (user_id None = the whole org): requests, tokens, list price."""
        rows = await self._fetch(
            """SELECT count(*) AS requests, coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
                      coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
                      coalesce(sum(list_price), 0)::bigint AS list_price
                 FROM creditgate.usage_records
                WHERE org_id = $1 AND byok AND provider = $3 AND ($2::text IS NULL OR user_id = $2)""",
            org_id, user_id, provider)
        r = rows[0]
        return {"requests": r["requests"], "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"], "list_price_millicredits": r["list_price"]}
