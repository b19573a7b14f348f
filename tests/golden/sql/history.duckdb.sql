SELECT
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
FROM "billing_plan_prices"
WHERE
  "plan" = CAST('ab' AS TEXT) AND "currency" = CAST('c' AS TEXT)
ORDER BY
  "plan",
  "currency",
  "_seq";
