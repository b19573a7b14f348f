CREATE TABLE IF NOT EXISTS `acme-data`.`cdc_state`.`billing_plan_prices` (
  `plan` STRING,
  `currency` STRING,
  `price` NUMERIC(10, 2),
  `meta` JSON,
  `renews_at` TIMESTAMP,
  `_valid_from` TIMESTAMP,
  `_valid_to` TIMESTAMP,
  `_is_current` BOOL,
  `_is_deleted` BOOL,
  `_op` STRING,
  `_seq` STRING,
  `_event_id` STRING,
  `_tx_id` STRING,
  `_ingested_at` TIMESTAMP,
  `_next_seq` STRING,
  `_unavailable` STRING,
  `_key_bucket` INT64
)
PARTITION BY RANGE_BUCKET(`_key_bucket`, GENERATE_ARRAY(0, 1000, 1))
CLUSTER BY `plan`, `currency`;

CREATE TABLE IF NOT EXISTS `acme-data`.`cdc_state`.`billing_plan_prices__truncates` (
  `_seq` STRING,
  `_valid_from` TIMESTAMP,
  `_event_id` STRING,
  `_tx_id` STRING,
  `_ingested_at` TIMESTAMP
);

CREATE OR REPLACE VIEW `acme-data`.`cdc_state`.`billing_plan_prices_current` AS
SELECT
  `plan`,
  `currency`,
  `price`,
  `meta`,
  `renews_at`,
  `_valid_from`,
  `_valid_to`,
  `_is_current`,
  `_is_deleted`,
  `_op`,
  `_seq`,
  `_event_id`,
  `_tx_id`,
  `_ingested_at`,
  `_next_seq`,
  `_unavailable`
FROM `acme-data`.`cdc_state`.`billing_plan_prices`
WHERE
  `_is_current` AND NOT `_is_deleted`;

CREATE OR REPLACE TABLE FUNCTION `acme-data`.`cdc_state`.`billing_plan_prices_as_of`(
    `cdc_as_of_time` TIMESTAMP
) AS
SELECT
  `plan`,
  `currency`,
  `price`,
  `meta`,
  `renews_at`,
  `_valid_from`,
  `_valid_to`,
  `_is_current`,
  `_is_deleted`,
  `_op`,
  `_seq`,
  `_event_id`,
  `_tx_id`,
  `_ingested_at`,
  `_next_seq`,
  `_unavailable`
FROM `acme-data`.`cdc_state`.`billing_plan_prices`
WHERE
  (
    `_valid_from` <= `cdc_as_of_time`
    AND (
      `_valid_to` IS NULL OR `_valid_to` > `cdc_as_of_time`
    )
  )
  AND NOT `_is_deleted`;

CREATE OR REPLACE TABLE FUNCTION `acme-data`.`cdc_state`.`billing_plan_prices_as_of_seq`(
    `cdc_as_of_seq` STRING
) AS
SELECT
  `plan`,
  `currency`,
  `price`,
  `meta`,
  `renews_at`,
  `_valid_from`,
  `_valid_to`,
  `_is_current`,
  `_is_deleted`,
  `_op`,
  `_seq`,
  `_event_id`,
  `_tx_id`,
  `_ingested_at`,
  `_next_seq`,
  `_unavailable`
FROM `acme-data`.`cdc_state`.`billing_plan_prices`
WHERE
  (
    `_seq` <= `cdc_as_of_seq`
    AND (
      `_next_seq` IS NULL OR `_next_seq` > `cdc_as_of_seq`
    )
  )
  AND NOT `_is_deleted`;
