CREATE TABLE IF NOT EXISTS "billing_plan_prices" (
  "plan" TEXT,
  "currency" TEXT,
  "price" DECIMAL(10, 2),
  "meta" JSON,
  "renews_at" TIMESTAMPTZ,
  "_valid_from" TIMESTAMPTZ,
  "_valid_to" TIMESTAMPTZ,
  "_is_current" BOOLEAN,
  "_is_deleted" BOOLEAN,
  "_op" TEXT,
  "_seq" TEXT,
  "_event_id" TEXT,
  "_tx_id" TEXT,
  "_ingested_at" TIMESTAMPTZ,
  "_next_seq" TEXT,
  "_unavailable" TEXT
);

CREATE TABLE IF NOT EXISTS "billing_plan_prices__truncates" (
  "_seq" TEXT,
  "_valid_from" TIMESTAMPTZ,
  "_event_id" TEXT,
  "_tx_id" TEXT,
  "_ingested_at" TIMESTAMPTZ
);

CREATE OR REPLACE VIEW "billing_plan_prices_current" AS
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
  "_is_current" AND NOT "_is_deleted";
