MERGE INTO "billing_plan_prices" AS t
USING (
  WITH "batch" AS (
    SELECT
      "s"."plan",
      "s"."currency",
      "s"."price",
      "s"."meta",
      "s"."renews_at",
      "s"."_valid_from",
      "s"."_op",
      "s"."_is_deleted",
      "s"."_seq",
      "s"."_event_id",
      "s"."_tx_id",
      "s"."_ingested_at",
      "s"."_unavailable"
    FROM "billing_plan_prices__stage" AS s
    WHERE
      "s"."_op" <> 't'
      AND NOT EXISTS(
        SELECT
          1
        FROM "billing_plan_prices__stage" AS d
        WHERE
          (
            "d"."plan" = "s"."plan" AND "d"."currency" = "s"."currency"
          )
          AND "d"."_seq" = "s"."_seq"
          AND "d"."_ord" < "s"."_ord"
      )
  ), "touched" AS (
    SELECT
      "plan",
      "currency",
      MIN("__from_seq") AS "__from_seq"
    FROM (
      SELECT
        "plan",
        "currency",
        "_seq" AS "__from_seq"
      FROM batch
    ) AS a
    GROUP BY
      "plan",
      "currency"
  ), "existing" AS (
    SELECT
      "x"."plan",
      "x"."currency",
      "x"."price",
      "x"."meta",
      "x"."renews_at",
      "x"."_valid_from",
      "x"."_valid_to",
      "x"."_is_current",
      "x"."_is_deleted",
      "x"."_op",
      "x"."_seq",
      "x"."_event_id",
      "x"."_tx_id",
      "x"."_ingested_at",
      "x"."_next_seq",
      "x"."_unavailable",
      "x"."_seq" <= "u"."__from_seq" AS "__anchor"
    FROM "billing_plan_prices" AS x
    INNER JOIN touched AS u
      ON "x"."plan" = "u"."plan" AND "x"."currency" = "u"."currency"
    WHERE
      (
        "x"."_next_seq" IS NULL OR "x"."_next_seq" > "u"."__from_seq"
      )
      AND (
        "x"."_next_seq" IS NULL OR "x"."_next_seq" > $since_seq
      )
  ), "fresh" AS (
    SELECT
      "b"."plan",
      "b"."currency",
      "b"."price",
      "b"."meta",
      "b"."renews_at",
      "b"."_valid_from",
      "b"."_op",
      "b"."_is_deleted",
      "b"."_seq",
      "b"."_event_id",
      "b"."_tx_id",
      "b"."_ingested_at",
      "b"."_unavailable"
    FROM batch AS b
    WHERE
      NOT EXISTS(
        SELECT
          1
        FROM existing AS e
        WHERE
          (
            "e"."plan" = "b"."plan" AND "e"."currency" = "b"."currency"
          )
          AND "e"."_seq" = "b"."_seq"
      )
  ), "chain" AS (
    SELECT
      "plan",
      "currency",
      "price",
      "meta",
      "renews_at",
      "_valid_from",
      "_op",
      "_is_deleted",
      "_seq",
      "_event_id",
      "_tx_id",
      "_ingested_at",
      "_unavailable",
      "__anchor",
      TRUE AS "__stored",
      FALSE AS "__candidate",
      "_valid_from" AS "__old_valid_from",
      "_valid_to" AS "__old_valid_to",
      "_next_seq" AS "__old_next_seq"
    FROM existing
    UNION ALL
    SELECT
      "plan",
      "currency",
      "price",
      "meta",
      "renews_at",
      "_valid_from",
      "_op",
      "_is_deleted",
      "_seq",
      "_event_id",
      "_tx_id",
      "_ingested_at",
      "_unavailable",
      FALSE AS "__anchor",
      FALSE AS "__stored",
      FALSE AS "__candidate",
      CAST(NULL AS TIMESTAMPTZ) AS "__old_valid_from",
      CAST(NULL AS TIMESTAMPTZ) AS "__old_valid_to",
      CAST(NULL AS TEXT) AS "__old_next_seq"
    FROM fresh
  ), "versions" AS (
    SELECT
      "plan",
      "currency",
      "price",
      "meta",
      "renews_at",
      "_valid_from",
      "_op",
      "_is_deleted",
      "_seq",
      "_event_id",
      "_tx_id",
      "_ingested_at",
      "_unavailable",
      "__anchor",
      "__stored",
      "__candidate",
      "__old_valid_from",
      "__old_valid_to",
      "__old_next_seq",
      MAX("_valid_from") OVER (
        PARTITION BY "plan", "currency"
        ORDER BY "_seq" ASC
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
      ) AS "__new_valid_from",
      CASE
        WHEN LEAD("_valid_from") OVER (PARTITION BY "plan", "currency" ORDER BY "_seq" ASC) IS NULL
        THEN CAST(NULL AS TIMESTAMPTZ)
        ELSE CASE
          WHEN LEAD("_valid_from") OVER (PARTITION BY "plan", "currency" ORDER BY "_seq" ASC) IS NULL
          OR MAX("_valid_from") OVER (
            PARTITION BY "plan", "currency"
            ORDER BY "_seq" ASC
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
          ) IS NULL
          THEN NULL
          ELSE GREATEST(
            LEAD("_valid_from") OVER (PARTITION BY "plan", "currency" ORDER BY "_seq" ASC),
            MAX("_valid_from") OVER (
              PARTITION BY "plan", "currency"
              ORDER BY "_seq" ASC
              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            )
          )
        END
      END AS "__new_valid_to",
      LEAD("_seq") OVER (PARTITION BY "plan", "currency" ORDER BY "_seq" ASC) AS "__new_next_seq",
      LAST_VALUE(
        CASE
          WHEN "__anchor" OR "_unavailable" IS NULL OR NOT STRPOS("_unavailable", ',meta,') > 0
          THEN {'v': "meta"}
        END
       IGNORE NULLS) OVER (
        PARTITION BY "plan", "currency"
        ORDER BY "_seq" ASC
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
      ) AS "__carry_0"
    FROM chain
  )
  SELECT
    *
  FROM (
    SELECT
      "plan",
      "currency",
      "price",
      CASE
        WHEN "__anchor" OR "_unavailable" IS NULL OR NOT STRPOS("_unavailable", ',meta,') > 0
        THEN "meta"
        ELSE "__carry_0"."v"
      END AS "meta",
      "renews_at",
      "__new_valid_from" AS "_valid_from",
      "_op",
      "_is_deleted",
      "_seq",
      "_event_id",
      "_tx_id",
      "_ingested_at",
      "_unavailable",
      "__new_valid_to",
      "__new_next_seq",
      "__stored"
    FROM versions
    WHERE
      NOT "__stored"
      OR "__new_next_seq" IS DISTINCT FROM "__old_next_seq"
      OR "__new_valid_to" IS DISTINCT FROM "__old_valid_to"
      OR "__new_valid_from" IS DISTINCT FROM "__old_valid_from"
      OR (
        NOT (
          "__anchor" OR "_unavailable" IS NULL OR NOT STRPOS("_unavailable", ',meta,') > 0
        )
        AND "meta" IS DISTINCT FROM "__carry_0"."v"
      )
  ) AS "c"
) AS "s"
ON (
  "t"."plan" = "s"."plan" AND "t"."currency" = "s"."currency"
)
AND "t"."_seq" = "s"."_seq"
AND (
  "t"."_next_seq" IS NULL OR "t"."_next_seq" > $since_seq
)
WHEN MATCHED THEN UPDATE SET
  "_valid_from" = "s"."_valid_from",
  "_valid_to" = "s"."__new_valid_to",
  "_next_seq" = "s"."__new_next_seq",
  "_is_current" = "s"."__new_next_seq" IS NULL,
  "meta" = "s"."meta"
WHEN NOT MATCHED THEN INSERT (
  "plan",
  "currency",
  "price",
  "meta",
  "renews_at",
  "_valid_from",
  "_valid_to",
  "_is_current",
  "_is_deleted",
  "_op",
  "_seq",
  "_event_id",
  "_tx_id",
  "_ingested_at",
  "_next_seq",
  "_unavailable"
) VALUES (
  "s"."plan",
  "s"."currency",
  "s"."price",
  "s"."meta",
  "s"."renews_at",
  "s"."_valid_from",
  "s"."__new_valid_to",
  "s"."__new_next_seq" IS NULL,
  "s"."_is_deleted",
  "s"."_op",
  "s"."_seq",
  "s"."_event_id",
  "s"."_tx_id",
  "s"."_ingested_at",
  "s"."__new_next_seq",
  "s"."_unavailable"
);
